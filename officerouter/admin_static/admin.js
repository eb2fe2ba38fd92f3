// officerouter admin page: keeps the live counters up to date.
// Served as a file of its own: the Content-Security-Policy allows no inline script.
"use strict";

(function () {
  var INTERVAL_MS = 2000;

  function update(values) {
    var cells = document.querySelectorAll("[data-counter]");
    for (var i = 0; i < cells.length; i++) {
      var name = cells[i].getAttribute("data-counter");
      if (Object.prototype.hasOwnProperty.call(values, name)) {
        // textContent: a value is never parsed as HTML.
        cells[i].textContent = String(values[name]);
      }
    }
  }

  function poll() {
    fetch("/admin/counters", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/admin/login");
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (values) {
        if (values) {
          update(values);
        }
      })
      .catch(function () {
        // The next poll tries again.
      })
      .then(function () {
        window.setTimeout(poll, INTERVAL_MS);
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.getElementById("counters")) {
      window.setTimeout(poll, INTERVAL_MS);
    }
  });
})();
