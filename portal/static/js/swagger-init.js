/* The API reference page: Swagger UI over the OpenAPI document named by the
   data-spec-url attribute of #swagger-ui. */
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || typeof SwaggerUIBundle === "undefined") { return; }

  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    tryItOutEnabled: true,
    validatorUrl: null
  });

  // Swagger UI leaves its selects (servers, media types) without a label: name each
  // after the text Swagger shows beside it, as it renders them.
  new MutationObserver(function () {
    root.querySelectorAll("select:not([aria-label])").forEach(function (select) {
      var box = select.closest("label, .servers, .content-type-wrapper, .response-control-media-type, div");
      var text = box && box.textContent ? box.textContent.replace(select.textContent, "").trim() : "";
      select.setAttribute("aria-label", text || "Choose an option");
    });
  }).observe(root, {childList: true, subtree: true});
}());
