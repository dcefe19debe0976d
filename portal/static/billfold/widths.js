/* Widths computed by the server, such as the share of a plan's limit a usage meter's
   bar shows: each element with a data-width attribute (a percentage) gets that width.
   It is set through the element's style property, which the Content-Security-Policy
   allows, where a style attribute in the page would be refused. */
(function () {
  "use strict";
  var elements = document.querySelectorAll("[data-width]");
  for (var i = 0; i < elements.length; i += 1) {
    elements[i].style.width = elements[i].getAttribute("data-width") + "%";
  }
}());
