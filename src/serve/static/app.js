// Progressive enhancement: the pages work without this file.
(function () {
  "use strict";

  // Upload page: drag and drop, preview, and upload through the API with a status line.
  var form = document.getElementById("upload-form");
  if (form) {
    var input = document.getElementById("image");
    var zone = document.getElementById("drop-zone");
    var preview = document.getElementById("preview");
    var status = document.getElementById("status");
    var show = function (file) {
      // Browsers draw PNG and JPEG only; DICOM and zip files get no preview.
      if (!file || !/^image\/(png|jpeg)$/.test(file.type)) { preview.hidden = true; return; }
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
    };
    input.addEventListener("change", function () { show(input.files[0]); });
    ["dragenter", "dragover"].forEach(function (t) {
      zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (t) {
      zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        show(input.files[0]);
      }
    });
    form.addEventListener("submit", function (e) {
      if (!window.fetch || !input.files.length) return;
      e.preventDefault();
      status.textContent = "Analysing...";
      var data = new FormData();
      for (var i = 0; i < input.files.length; i++) data.append("image", input.files[i]);
      // One PNG or JPEG is one analysis; DICOM, a zip or several files make a batch.
      var single = input.files.length === 1 && /^image\/(png|jpeg)$/.test(input.files[0].type);
      fetch(single ? "/api/v1/analyses" : "/api/v1/batches", { method: "POST", body: data })
        .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, body: j }; }); })
        .then(function (r) {
          if (r.ok) { window.location = r.body.links.page; }
          else { status.textContent = r.body.error || "The scan could not be analysed."; status.className = "error"; }
        })
        .catch(function () { status.textContent = "The server could not be reached."; status.className = "error"; });
    });
  }

  // Result page: heat-map toggle and opacity.
  var heat = document.getElementById("heatmap");
  var toggle = document.getElementById("heatmap-toggle");
  var opacity = document.getElementById("heatmap-opacity");
  if (heat && toggle && opacity) {
    var apply = function () {
      heat.style.display = toggle.checked ? "" : "none";
      heat.style.opacity = String(opacity.value / 100);
    };
    toggle.addEventListener("change", apply);
    opacity.addEventListener("input", apply);
    apply();
  }
})();
