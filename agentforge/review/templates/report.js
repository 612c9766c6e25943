// Sorting and filtering of the task table, and opening a kernel's details from a link.
// Reads only data- attributes of the table (no run data lives in this script).
(function () {
  "use strict";
  var table = document.getElementById("task-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var filter = document.getElementById("filter");
  var status = document.getElementById("status-filter");
  var shown = document.getElementById("shown");

  function apply() {
    var q = filter.value.trim().toLowerCase();
    var s = status.value;
    var n = 0;
    rows.forEach(function (r) {
      var ok = (!q || r.dataset.text.toLowerCase().indexOf(q) >= 0) && (!s || r.dataset.status === s);
      r.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = n + " of " + rows.length + " tasks";
  }

  function sortBy(btn) {
    var key = btn.dataset.key, num = btn.dataset.type === "num";
    var dir = btn.classList.contains("asc") ? -1 : 1;
    table.querySelectorAll("th button").forEach(function (b) { b.classList.remove("asc", "desc"); });
    btn.classList.add(dir === 1 ? "asc" : "desc");
    rows.sort(function (a, b) {
      var x = a.dataset[key] || "", y = b.dataset[key] || "";
      if (x === "" || y === "") { return (x === "") - (y === ""); }  // missing values last
      if (num) { return dir * (parseFloat(x) - parseFloat(y)); }
      return dir * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function openHash() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (el && el.tagName === "DETAILS") { el.open = true; el.scrollIntoView(); }
  }

  filter.addEventListener("input", apply);
  status.addEventListener("change", apply);
  table.querySelectorAll("th button").forEach(function (b) {
    b.addEventListener("click", function () { sortBy(b); });
  });
  window.addEventListener("hashchange", openHash);
  openHash();
  apply();
  document.documentElement.dataset.ready = "1";
})();
