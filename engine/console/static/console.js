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
