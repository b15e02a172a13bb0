/* The console's training page: polls the shown run's status every 2 s while it is queued or
   running, and updates the progress, ETA, charts and log in place. The panel's HTML is rendered
   (and escaped) by the server; the status fields are set as text. No inline script: the URL comes
   from a data- attribute. */
(function () {
  "use strict";

  // The log is a tail: show its end.
  function scrollLog() {
    const log = document.getElementById("run-log");
    if (log) log.scrollTop = log.scrollHeight;
  }
  scrollLog();

  const run = document.getElementById("run");
  if (!run || run.dataset.finished === "true") return;

  const url = run.dataset.statusUrl;
  const POLL_MS = 2000;
  const el = (id) => document.getElementById(id);

  function show(data) {
    el("run-status").textContent = data.status;
    el("run-progress").value = data.progress;
    el("run-percent").textContent = Math.round(data.progress * 100) + "%";
    el("run-steps").textContent = data.step + " / " + (data.total_steps || "?");
    el("run-eta").textContent = data.eta_seconds != null && !data.finished ? "ETA " + Math.round(data.eta_seconds) + " s" : "";
    el("run-model").textContent = data.model_version ? "model " + data.model_version : "";
    el("run-panel").innerHTML = data.panel;
    scrollLog();
    if (data.finished) {
      const cancel = el("cancel-form");
      if (cancel) cancel.remove();
    }
  }

  async function poll() {
    let data = null;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) data = await response.json();
    } catch (err) {
      data = null; // a network blip: try again at the next tick
    }
    if (data) {
      show(data);
      if (data.finished) {
        // The runs and model-versions tables changed too: reload them once, at the end.
        window.setTimeout(() => window.location.reload(), 1500);
        return;
      }
    }
    window.setTimeout(poll, POLL_MS);
  }

  window.setTimeout(poll, POLL_MS);
})();
