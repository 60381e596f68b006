// Strait dashboard: reloads the page's live part every 2 s (no reload of the page).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var src = live.getAttribute("data-src");
  var stamp = document.getElementById("updated");
  function tick() {
    fetch(src, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/signin"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (text) {
        if (text !== null && text !== undefined) {
          live.innerHTML = text;
          if (stamp) stamp.textContent = new Date().toLocaleTimeString();
        }
      })
      .catch(function () { if (stamp) stamp.textContent = "failed, retrying"; })
      .then(function () { window.setTimeout(tick, 2000); });
  }
  window.setTimeout(tick, 2000);
})();
