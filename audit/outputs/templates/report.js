// The report's own script: sorting and filtering its tables, and drawing a group's detail when it is opened.
// It reads the JSON block the report embeds and writes every string from it with textContent, never as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function cellValue(row, index) {
    var cell = row.cells[index];
    return cell ? (cell.getAttribute("data-v") !== null ? cell.getAttribute("data-v") : cell.textContent) : "";
  }

  // Sorting: a click on a header sorts by that column (numbers by their data-v), a second click reverses.
  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, index) {
      if (!th.hasAttribute("data-sort")) { return; }
      th.tabIndex = 0;
      th.title = "sort";
      function sort() {
        var numeric = th.getAttribute("data-sort") === "num";
        var descending = th.getAttribute("aria-sort") !== "descending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index), y = cellValue(b, index), order;
          if (numeric) {
            x = parseFloat(x); y = parseFloat(y);
            x = isNaN(x) ? -Infinity : x; y = isNaN(y) ? -Infinity : y;
            order = x < y ? -1 : (x > y ? 1 : 0);
          } else {
            order = x.localeCompare(y);
          }
          return descending ? -order : order;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
    });
  }

  // Filters: each input names its table and the column it searches; a row stays when every filter matches.
  function applyFilters(table) {
    var inputs = document.querySelectorAll('input[data-table="' + table.id + '"]');
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var keep = Array.prototype.every.call(inputs, function (input) {
        var wanted = input.value.trim().toLowerCase();
        var column = parseInt(input.getAttribute("data-column"), 10);
        return !wanted || row.cells[column].textContent.toLowerCase().indexOf(wanted) >= 0;
      });
      row.hidden = !keep;
      shown += keep ? 1 : 0;
    });
    var count = document.getElementById(table.id + "-count");
    if (count) { count.textContent = shown + " of " + table.tBodies[0].rows.length + " shown"; }
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), sortable);
  Array.prototype.forEach.call(document.querySelectorAll("input[data-table]"), function (input) {
    input.addEventListener("input", function () { applyFilters(document.getElementById(input.getAttribute("data-table"))); });
  });

  // A group's detail: its most distinctive words as bars with 95% whiskers, and their table.
  var DETAIL_FIELDS = ["word", "in group", "in the rest", "log odds (95% CI)", "lift", "NPMI", "p", "test", "q"];

  function chart(rows) {
    var span = 1e-9;
    rows.forEach(function (r) { span = Math.max(span, Math.abs(r.lo), Math.abs(r.hi)); });
    var box = el("div", "chart");
    rows.forEach(function (r) {
      var line = el("div", "bar-row");
      line.appendChild(el("span", "bar-label", r.word.slice(0, 24)));
      var track = el("span", "bar-track");
      var zero = 50, scale = 50 / span;
      var bar = el("span", "bar" + (r.flagged ? " flagged" : ""));
      var x0 = Math.min(zero, zero + r.lor * scale), x1 = Math.max(zero, zero + r.lor * scale);
      bar.style.left = x0 + "%";
      bar.style.width = Math.max(0.3, x1 - x0) + "%";
      var whisker = el("span", "whisker");
      whisker.style.left = (zero + r.lo * scale) + "%";
      whisker.style.width = Math.max(0.1, (r.hi - r.lo) * scale) + "%";
      track.appendChild(el("span", "axis"));
      track.appendChild(bar);
      track.appendChild(whisker);
      line.appendChild(track);
      box.appendChild(line);
    });
    return box;
  }

  function detail(sectionId, index) {
    var section = data.sections[sectionId];
    var group = section.groups[index];
    var rows = section.rows[index];
    var box = el("section", "group-detail");
    box.id = sectionId + "-group-" + index;
    var head = el("h4", null, group.name + " ");
    head.appendChild(el("span", "muted small", "(" + group.n + " images)"));
    var close = el("button", "close", "close");
    close.type = "button";
    close.addEventListener("click", function () { box.remove(); });
    head.appendChild(close);
    box.appendChild(head);
    if (!rows.length) {
      box.appendChild(el("p", "muted", "No " + section.singular + " reaches the minimum count in this group."));
      return box;
    }
    box.appendChild(chart(rows));
    var table = el("table", "detail-table");
    var tr = el("tr");
    DETAIL_FIELDS.forEach(function (f) { tr.appendChild(el("th", null, f === "word" ? section.singular : f)); });
    table.appendChild(el("thead")).appendChild(tr);
    var body = el("tbody");
    rows.forEach(function (r) {
      var row = el("tr");
      row.appendChild(el("td", "word" + (r.flagged ? " flag" : ""), r.word));
      r.cells.forEach(function (c) { row.appendChild(el("td", "n", c)); });
      body.appendChild(row);
    });
    table.appendChild(body);
    box.appendChild(table);
    return box;
  }

  function open(sectionId, index, scroll) {
    var existing = document.getElementById(sectionId + "-group-" + index);
    var target = existing || detail(sectionId, index);
    if (!existing) { document.getElementById(sectionId + "-details").appendChild(target); }
    if (scroll) { target.scrollIntoView({block: "nearest"}); }
  }

  Array.prototype.forEach.call(document.querySelectorAll("button.open"), function (button) {
    button.addEventListener("click", function () {
      open(button.getAttribute("data-section"), parseInt(button.getAttribute("data-index"), 10), true);
    });
  });
  Object.keys(data.sections).forEach(function (id) {
    if (data.sections[id].open) {
      data.sections[id].groups.forEach(function (g, i) { open(id, i, false); });
    }
  });
}());
