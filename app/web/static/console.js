// Nightshift console: live refresh without reloading the page. Everything works without this file.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // Parts of a page marked data-refresh="URL" are replaced by URL's HTML every data-every seconds, unless the
  // tab is hidden or the pointer is on a form (an action about to be taken).
  function refresh(el) {
    var every = (parseFloat(el.getAttribute("data-every")) || 5) * 1000;
    setInterval(function () {
      if (document.hidden || el.querySelector("form:hover, button:focus")) { return; }
      fetch(el.getAttribute("data-refresh"), {credentials: "same-origin"}).then(function (r) {
        if (r.ok) { return r.text(); }
        throw new Error(r.status);
      }).then(function (html) { el.innerHTML = html; }).catch(function () {});
    }, every);
  }

  // A job's page follows the job while it waits or runs: the progress bar moves, and the page reloads once the
  // job's state changes (to show the outcome).
  function follow(el) {
    var id = el.getAttribute("data-job"), state = el.getAttribute("data-state");
    if (["queued", "retrying", "running"].indexOf(state) < 0) { return; }
    setInterval(function () {
      if (document.hidden) { return; }
      fetch("/api/jobs/" + encodeURIComponent(id), {credentials: "same-origin"}).then(function (r) {
        return r.ok ? r.json() : null;
      }).then(function (job) {
        if (!job) { return; }
        if (job.state !== state) { window.location.reload(); return; }
        var p = job.progress, bar = document.getElementById("progress");
        if (p && bar && p.percent !== undefined) {
          bar.value = p.percent;
          document.getElementById("progress-text").textContent = p.done + " / " + p.total + " (" + p.percent + "%)";
          document.getElementById("progress-note").textContent = p.note || "";
        } else if (p && !bar) {
          window.location.reload();
        }
      }).catch(function () {});
    }, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh]"), refresh);
    Array.prototype.forEach.call(document.querySelectorAll("[data-job]"), follow);
  });
})();
