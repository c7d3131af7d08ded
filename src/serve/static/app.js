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
    // The form itself is sent (it carries the CSRF token, and the server answers with the
    // result page or the form again with the reason); this only says that work is under way.
    form.addEventListener("submit", function () {
      if (!input.files.length) return;
      status.textContent = "Analysing...";
      status.className = "";
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

  // Review queue: one key per verdict (c confirm, 1-9 a class, n not assessable), except
  // while typing a comment. The buttons stay the way to do it without a keyboard.
  var review = document.getElementById("review-form");
  if (review) {
    document.addEventListener("keydown", function (e) {
      var target = e.target;
      if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
      if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")) return;
      var button = review.querySelector('button[data-key="' + e.key.toLowerCase() + '"]');
      if (!button) return;
      e.preventDefault();
      if (review.requestSubmit) { review.requestSubmit(button); } else { button.click(); }
    });
  }
})();
