/* EdgeFleet dashboard: the little JavaScript the server-rendered pages need.
   Copy buttons, bulk selection, device charts (uPlot) and uploads with a progress bar. */
(function () {
  "use strict";

  function csrfToken() {
    var m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (m) return decodeURIComponent(m[1]);
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // --- Copy to clipboard (with a fallback for plain-HTTP pages where the API is missing) ---------
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-copy]");
    if (!btn) return;
    var el = document.querySelector(btn.getAttribute("data-copy"));
    if (!el) return;
    var text = el.textContent.trim();
    function done() { var old = btn.textContent; btn.textContent = "Copied"; setTimeout(function () { btn.textContent = old; }, 1500); }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else { fallback(); }
    function fallback() {
      var range = document.createRange(); range.selectNodeContents(el);
      var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
      try { document.execCommand("copy"); done(); } catch (e) { /* selected: the user can press Ctrl+C */ }
    }
  });

  // --- Bulk selection ------------------------------------------------------------------------------
  function updateCount(form) {
    var n = form.querySelectorAll("input[name=devices]:checked").length;
    var out = form.querySelector("[data-selected-count]");
    if (out) out.textContent = n;
  }
  document.addEventListener("change", function (ev) {
    var form = ev.target.closest("#bulk-form");
    if (!form) return;
    if (ev.target.matches("[data-select-all]")) {
      form.querySelectorAll("input[name=devices]").forEach(function (c) { c.checked = ev.target.checked; });
    }
    updateCount(form);
  });

  // --- Device charts (uPlot) -------------------------------------------------------------------------
  var CHARTS = [
    {key: "cpu", title: "CPU %", series: [["cpu", "avg", "#1f6feb"], ["cpu_max", "max", "#93c5fd"]], max: 100},
    {key: "mem", title: "Memory %", series: [["mem", "used", "#7c3aed"]], max: 100},
    {key: "disk", title: "Disk %", series: [["disk", "used", "#b7791f"]], max: 100},
    {key: "net", title: "Network (bytes/s)", series: [["net_rx", "rx", "#1a7f37"], ["net_tx", "tx", "#c62828"]]},
    {key: "temp", title: "Temperature °C", series: [["temp", "°C", "#db2777"]]}
  ];
  function fmtBytes(v) {
    if (v == null) return "";
    var u = ["B", "kB", "MB", "GB"]; var i = 0;
    while (Math.abs(v) >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return v.toFixed(v < 10 && i ? 1 : 0) + " " + u[i];
  }
  function drawCharts(root, data) {
    root.querySelectorAll(".chart").forEach(function (c) { c.remove(); });
    var empty = root.querySelector("[data-empty]");
    if (!data.ts || !data.ts.length) {
      if (empty) { empty.hidden = false; empty.textContent = "No telemetry in this period yet."; }
      return;
    }
    if (empty) empty.hidden = true;
    var width = Math.max(260, Math.min(root.clientWidth, 1200) / (root.clientWidth > 900 ? 2 : 1) - 24);
    CHARTS.forEach(function (spec) {
      var cols = [data.ts]; var series = [{}];
      var any = false;
      spec.series.forEach(function (s) {
        var col = data[s[0]] || [];
        if (col.some(function (v) { return v != null; })) any = true;
        cols.push(col);
        series.push({label: s[1], stroke: s[2], width: 1.5, spanGaps: false,
                     value: spec.key === "net" ? function (u, v) { return v == null ? "--" : fmtBytes(v) + "/s"; } : undefined});
      });
      var box = document.createElement("div"); box.className = "chart"; box.setAttribute("data-chart", spec.key);
      box.setAttribute("data-points", String(data.ts.length));
      var h = document.createElement("h3"); h.textContent = spec.title; box.appendChild(h);
      root.appendChild(box);
      if (!any) { var p = document.createElement("p"); p.className = "empty"; p.textContent = "Not reported by this device."; box.appendChild(p); return; }
      var axes = [{}, {size: 60, values: spec.key === "net" ? function (u, vals) { return vals.map(fmtBytes); } : undefined}];
      var opts = {width: width, height: 170, series: series, axes: axes,
                  scales: spec.max ? {y: {range: [0, spec.max]}} : {}, legend: {live: true}, cursor: {drag: {x: false, y: false}}};
      new uPlot(opts, cols, box);
    });
  }
  function loadCharts(root, range) {
    if (typeof uPlot === "undefined") return;
    fetch(root.getAttribute("data-url") + "?range=" + encodeURIComponent(range), {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (data) { drawCharts(root, data); })
      .catch(function () { var e = root.querySelector("[data-empty]"); if (e) { e.hidden = false; e.textContent = "Could not load the charts."; } });
  }
  function initCharts() {
    var root = document.getElementById("device-charts");
    if (!root) return;
    var range = "1h";
    loadCharts(root, range);
    document.querySelectorAll("[data-chart-ranges] button").forEach(function (b) {
      b.addEventListener("click", function () {
        document.querySelectorAll("[data-chart-ranges] button").forEach(function (x) { x.classList.remove("active"); });
        b.classList.add("active"); range = b.getAttribute("data-range"); loadCharts(root, range);
      });
    });
    // Live: redraw every 30 s (rollups are per minute, so faster would show nothing new).
    setInterval(function () { if (!document.hidden) loadCharts(root, range); }, 30000);
  }

  // --- Uploads with a progress bar (XMLHttpRequest: fetch has no upload progress) ---------------
  function initUploads() {
    document.querySelectorAll("form[data-upload]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var bar = form.querySelector("progress"), status = form.querySelector("[data-upload-status]");
        var button = form.querySelector("button[type=submit]");
        var data = new FormData(form);
        var xhr = new XMLHttpRequest();
        xhr.open("POST", form.getAttribute("data-upload"));
        xhr.setRequestHeader("X-CSRFToken", csrfToken());
        xhr.setRequestHeader("Accept", "application/json");
        xhr.upload.onprogress = function (e) {
          if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded;
            status.textContent = "Uploading… " + Math.round(100 * e.loaded / e.total) + " %"; }
        };
        xhr.upload.onload = function () { status.textContent = "Uploaded; validating the model on the server…"; };
        xhr.onload = function () {
          button.disabled = false;
          if (xhr.status >= 200 && xhr.status < 300) {
            status.textContent = "Done."; status.className = "ok";
            window.location.reload();
          } else {
            var msg = "Upload failed (" + xhr.status + ")";
            try { var body = JSON.parse(xhr.responseText); msg += ": " + (body.detail || JSON.stringify(body)); } catch (e) { /* not JSON */ }
            status.textContent = msg; status.className = "error";
          }
        };
        xhr.onerror = function () { button.disabled = false; status.textContent = "Network error during the upload."; status.className = "error"; };
        button.disabled = true; bar.hidden = false; bar.value = 0; status.className = ""; status.textContent = "Starting…";
        xhr.send(data);
      });
    });
  }

  // --- Deployment form: show only the fields the chosen target and policy use --------------------
  function initDeploymentForm() {
    var form = document.getElementById("deployment-form");
    if (!form) return;
    var rules = {target_labels: ["target_kind", "labels"], target_devices: ["target_kind", "devices"],
                 pinned_variant: ["variant_policy", "pinned"]};
    function apply() {
      Object.keys(rules).forEach(function (name) {
        var box = form.querySelector("[data-field=" + name + "]");
        var control = form.elements[rules[name][0]];
        if (box && control) box.hidden = control.value !== rules[name][1];
      });
    }
    form.addEventListener("change", apply);
    apply();
  }

  document.addEventListener("DOMContentLoaded", function () { initCharts(); initUploads(); initDeploymentForm(); });
})();
