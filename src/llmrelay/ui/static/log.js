"use strict";
// The live request log: polls /ui/api/requests and prepends new ledger rows. Every value is
// written with textContent, so nothing a client sent can become markup.
(function () {
  const rows = document.getElementById("log-rows");
  const status = document.getElementById("log-status");
  const seen = new Set();
  const MAX_ROWS = 200;
  const OVERLAP = 5; // seconds re-read each poll: rows from other workers may land late
  let latest = null;

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function money(value) {
    return value === 0 ? "$0" : "$" + value.toFixed(value < 0.01 ? 6 : 4);
  }

  function ms(value) {
    if (value === null || value === undefined) return "-";
    return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
  }

  function render(item) {
    const tr = document.createElement("tr");
    tr.className = item.status;
    tr.dataset.id = item.id;
    cell(tr, new Date(item.created * 1000).toLocaleTimeString());
    cell(tr, item.key);
    cell(tr, item.requested_model || "-");
    cell(tr, (item.model || "-") + (item.basket ? " [" + item.basket + "]" : ""));
    cell(tr, item.status + " " + item.http_status + (item.error_type ? " " + item.error_type : ""));
    cell(tr, item.prompt_tokens + " / " + item.completion_tokens, "num");
    cell(tr, money(item.cost), "num");
    cell(tr, ms(item.ttft_ms), "num");
    cell(tr, ms(item.latency_ms), "num");
    const id = cell(tr, "");
    const code = document.createElement("code");
    code.textContent = item.id;
    id.appendChild(code);
    return tr;
  }

  async function poll() {
    try {
      const url = "/ui/api/requests" + (latest === null ? "" : "?after=" + (latest - OVERLAP));
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.status === 401) {
        window.location.href = "/ui/login?next=%2Fui%2Flog";
        return;
      }
      const data = (await response.json()).data;
      for (const item of data.slice().reverse()) {
        if (seen.has(item.id)) continue;
        seen.add(item.id);
        rows.insertBefore(render(item), rows.firstChild);
        if (latest === null || item.created > latest) latest = item.created;
      }
      while (rows.children.length > MAX_ROWS) {
        seen.delete(rows.lastChild.dataset.id);
        rows.removeChild(rows.lastChild);
      }
      if (latest === null) latest = Date.now() / 1000;
      status.textContent = "live · updated " + new Date().toLocaleTimeString();
    } catch (err) {
      status.textContent = "reconnecting…";
    } finally {
      window.setTimeout(poll, 1500);
    }
  }

  poll();
})();
