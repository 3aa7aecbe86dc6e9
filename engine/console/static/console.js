// The console's only script: the Event Debugger's live list (Server-Sent Events).
// Rows are built with textContent, never innerHTML: event data is shown, never run.
"use strict";

(function () {
  const table = document.getElementById("events");
  if (!table || !window.EventSource) {
    return;
  }
  const body = table.tBodies[0];
  const live = document.getElementById("live");
  const url = new URL(table.dataset.stream, window.location.href);
  url.searchParams.set("cursor", table.dataset.cursor || "");
  const limit = 500;

  function when(at) {
    if (typeof at !== "number") {
      return "";
    }
    return new Date(at * 1000).toISOString().replace("T", " ");
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) {
      td.className = className;
    }
    td.textContent = text === null || text === undefined ? "" : String(text);
    return td;
  }

  function why(row) {
    const parts = [row.reason || row.cause];
    if (row.status !== null && row.status !== undefined) {
      parts.push("HTTP " + row.status);
    }
    return parts.filter(Boolean).join(" · ");
  }

  function render(row) {
    const tr = document.createElement("tr");
    tr.dataset.id = row.id;
    tr.className = "new";
    const first = document.createElement("td");
    const link = document.createElement("a");
    link.href = "/console/events/" + encodeURIComponent(row.id);
    link.textContent = when(row.at);
    first.appendChild(link);
    tr.appendChild(first);
    const name = cell(row.event || row.type);
    if (row.replay) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "replay";
      name.appendChild(document.createTextNode(" "));
      name.appendChild(tag);
    }
    tr.appendChild(name);
    tr.appendChild(cell(row.email));
    tr.appendChild(cell(row.userId));
    tr.appendChild(cell(row.integration));
    const outcome = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "badge " + String(row.outcome || "").replace(/[^a-z_]/g, "");
    badge.textContent = row.outcome || "";
    outcome.appendChild(badge);
    tr.appendChild(outcome);
    tr.appendChild(cell(why(row)));
    tr.appendChild(cell(row.attempts, "num"));
    tr.appendChild(cell(typeof row.latency_ms === "number" ? row.latency_ms.toFixed(1) + " ms" : "", "num"));
    return tr;
  }

  const source = new EventSource(url.toString());
  source.addEventListener("open", function () {
    live.textContent = "Live: new events appear at the top.";
  });
  source.addEventListener("row", function (message) {
    const row = JSON.parse(message.data);
    if (body.querySelector('tr[data-id="' + CSS.escape(String(row.id)) + '"]')) {
      return;
    }
    body.insertBefore(render(row), body.firstChild);
    while (body.rows.length > limit) {
      body.deleteRow(body.rows.length - 1);
    }
    const empty = document.getElementById("empty");
    if (empty) {
      empty.remove();
    }
    live.textContent = "Live: last event at " + when(row.at) + ".";
  });
  source.addEventListener("error", function () {
    live.textContent = "Live: reconnecting…";
  });
  window.addEventListener("pagehide", function () {
    source.close();
  });
})();

// The playground: re-check and re-run the preset as you type (nothing is sent, nothing stored).
(function () {
  const root = document.getElementById("playground");
  if (!root) {
    return;
  }
  const yaml = document.getElementById("yaml");
  const events = document.getElementById("events-input");
  const choice = document.getElementById("preset-choice");
  const problems = document.getElementById("problems");
  const results = document.getElementById("results");
  const status = document.getElementById("play-status");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let timer = null;
  let asked = 0;

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function json(value) {
    return JSON.stringify(value === undefined ? null : value, null, 2);
  }

  function details(summary, value, open) {
    const node = element("details");
    node.open = Boolean(open);
    node.appendChild(element("summary", summary));
    node.appendChild(element("pre", json(value)));
    return node;
  }

  function render(answer) {
    problems.replaceChildren();
    for (const problem of answer.problems || []) {
      problems.appendChild(element("li", (problem.line ? "line " + problem.line + ": " : "") + problem.message));
    }
    for (const problem of answer.event_problems || []) {
      problems.appendChild(element("li", problem));
    }
    results.replaceChildren();
    for (const item of answer.events || []) {
      const outcome = item.outcome || {};
      const section = element("section", null, "play-event");
      const title = element("h3", "Event " + item.index + ": ");
      title.appendChild(element("span", outcome.outcome, "badge " + String(outcome.outcome || "").replace(/[^a-z_]/g, "")));
      title.appendChild(document.createTextNode(" " + (outcome.reason || outcome.cause || "")));
      section.appendChild(title);
      section.appendChild(element("p", "Decided by: " + item.decided_by));
      if (item.request !== null && item.request !== undefined) {
        section.appendChild(details("Request", item.request, true));
      }
      section.appendChild(details("Explain trace", item.steps, false));
      results.appendChild(section);
    }
  }

  async function check() {
    const mine = ++asked;
    status.textContent = "Checking…";
    try {
      const answer = await fetch("/console/api/playground", {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({yaml: yaml.value, events: events.value}),
        credentials: "same-origin",
      });
      const body = await answer.json();
      if (mine !== asked) {
        return; // a newer edit is being checked
      }
      if (!answer.ok) {
        status.textContent = body.error || "The check failed.";
        return;
      }
      render(body);
      const count = (body.problems || []).length;
      status.textContent = count ? count + " problem(s)." : "Checked.";
    } catch (error) {
      if (mine === asked) {
        status.textContent = "The console did not answer.";
      }
    }
  }

  function soon() {
    window.clearTimeout(timer);
    timer = window.setTimeout(check, 300);
  }

  // Golden cases: run the chosen preset's cases against the YAML as it is in the page, and show each diff.
  const goldenButton = document.getElementById("run-golden");
  const golden = document.getElementById("golden");
  const goldenStatus = document.getElementById("golden-status");

  function renderGolden(answer) {
    golden.replaceChildren();
    const problems = answer.problems || [];
    if (problems.length) {
      goldenStatus.textContent = "The preset has " + problems.length + " problem(s): fix them to run its cases.";
      return;
    }
    if (answer.note) {
      goldenStatus.textContent = answer.note;
      return;
    }
    goldenStatus.textContent = answer.passed + " passed, " + answer.failed + " failed (" + answer.folder + "/).";
    for (const item of answer.cases || []) {
      const node = element("details", null, "golden-case " + (item.passed ? "pass" : "fail"));
      node.open = !item.passed;
      node.dataset.case = item.name;
      const summary = element("summary");
      const badge = "badge " + (item.passed ? "delivered" : "failed");
      summary.appendChild(element("span", item.passed ? "pass" : "fail", badge));
      summary.appendChild(document.createTextNode(" " + item.name));
      node.appendChild(summary);
      if (item.error) {
        node.appendChild(element("p", item.error, "error"));
      }
      if (item.diff) {
        const pre = element("pre", null, "diff");
        for (const line of item.diff.split("\n")) {
          const kind = line.startsWith("+") ? "added"
            : line.startsWith("-") ? "removed" : line.startsWith("@@") ? "hunk" : "";
          pre.appendChild(element("span", line + "\n", kind));
        }
        node.appendChild(pre);
      }
      golden.appendChild(node);
    }
  }

  goldenButton.addEventListener("click", async function () {
    goldenStatus.textContent = "Running the golden cases…";
    try {
      const answer = await fetch("/console/api/playground/golden", {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({yaml: yaml.value, preset: choice.value}),
        credentials: "same-origin",
      });
      const body = await answer.json();
      if (!answer.ok) {
        goldenStatus.textContent = body.error || "The run failed.";
        return;
      }
      renderGolden(body);
    } catch (error) {
      goldenStatus.textContent = "The console did not answer.";
    }
  });

  yaml.addEventListener("input", soon);
  events.addEventListener("input", soon);
  choice.addEventListener("change", async function () {
    const answer = await fetch("/console/api/playground/presets/" + choice.value.split("/").map(encodeURIComponent).join("/"),
      {credentials: "same-origin"});
    if (answer.ok) {
      yaml.value = (await answer.json()).yaml;
      check();
    }
  });
})();
