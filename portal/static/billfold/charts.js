/* Billfold's charts: Chart.js (served from this project) over the JSON of the page's
   data-source. Amounts arrive in minor units and are scaled only for display. */
(function () {
  "use strict";
  if (typeof Chart === "undefined") { return; }

  var COLORS = ["#337ab7", "#5cb85c", "#f0ad4e", "#d9534f", "#5bc0de", "#777777"];

  function money(body) {
    var scale = Math.pow(10, body.minor_digits);
    var format = new Intl.NumberFormat("en-US", {style: "currency", currency: body.currency});
    return {
      value: function (minor) { return minor / scale; },
      text: function (major) { return format.format(major); }
    };
  }

  function label(start, granularity) {
    return granularity === "month" ? start.slice(0, 7) : start;
  }

  function draw(id, type, labels, datasets, yText, stacked) {
    var canvas = document.getElementById("chart-" + id);
    if (!canvas) { return null; }
    return new Chart(canvas, {
      type: type,
      data: {labels: labels, datasets: datasets},
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: {mode: "index", intersect: false},
        scales: {
          x: {stacked: !!stacked},
          y: {stacked: !!stacked, beginAtZero: true, ticks: {callback: yText}}
        },
        plugins: {tooltip: {callbacks: {label: function (ctx) {
          return ctx.dataset.label + ": " + yText(ctx.parsed.y);
        }}}}
      }
    });
  }

  function dataset(name, values, color, extra) {
    var set = {label: name, data: values, borderColor: color, backgroundColor: color,
               pointRadius: values.length > 60 ? 0 : 2};
    Object.keys(extra || {}).forEach(function (k) { set[k] = extra[k]; });
    return set;
  }

  function analytics(body) {
    var m = money(body);
    var labels = body.spend.map(function (p) { return label(p.start, body.granularity); });
    draw("spend", "bar", labels, [
      dataset("Usage charges", body.spend.map(function (p) { return m.value(p.usage); }), COLORS[0]),
      dataset("Plan fee", body.spend.map(function (p) { return m.value(p.plan_fee); }), COLORS[5])
    ], m.text, true);
    draw("cumulative-spend", "line", labels, [
      dataset("Cumulative spend", body.spend.map(function (p) { return m.value(p.cumulative); }),
              COLORS[0], {fill: false})
    ], m.text);
    draw("credit-purchases", "line", labels, [
      dataset("Credit purchased", body.credit.map(function (p) { return m.value(p.cumulative); }),
              COLORS[1], {stepped: true})
    ], m.text);
    draw("balance", "line", labels, [
      dataset("Balance", body.credit.map(function (p) { return m.value(p.balance); }), COLORS[2])
    ], m.text);

    var select = document.getElementById("usage-metric");
    var chart = null;
    function showMetric() {
      var code = select ? select.value : "llm_tokens";
      var metric = body.metrics[code];
      var byStart = {};
      body.usage.forEach(function (b) {
        if (b.metric === code) { byStart[b.start] = Number(b.quantity || 0); }
      });
      var values = body.spend.map(function (p) { return byStart[p.start] || 0; });
      var number = new Intl.NumberFormat("en-US", {maximumFractionDigits: 2});
      var text = function (v) { return number.format(v) + " " + metric.unit; };
      if (chart) { chart.destroy(); }
      chart = draw("usage", "bar", labels, [dataset(metric.label, values, COLORS[4])], text);
    }
    if (select) {
      var used = body.usage.filter(function (b) { return b.quantity; }).map(function (b) { return b.metric; });
      if (used.length && used.indexOf(select.value) < 0) { select.value = used[0]; }
      select.addEventListener("change", showMetric);
    }
    showMetric();
  }

  function revenue(body) {
    var m = money(body);
    var labels = body.data.map(function (b) { return label(b.start, body.granularity); });
    var series = function (key) { return body.data.map(function (b) { return m.value(b[key]); }); };
    draw("revenue", "bar", labels, [
      dataset("Gross", series("gross"), COLORS[0]),
      dataset("Refunds", series("refunds"), COLORS[3]),
      dataset("Processor fees", series("fees"), COLORS[2]),
      dataset("Net", series("net"), COLORS[1], {type: "line", fill: false})
    ], m.text);
  }

  function load(elementId, render) {
    var element = document.getElementById(elementId);
    if (!element) { return; }
    fetch(element.getAttribute("data-source"), {credentials: "same-origin",
                                                 headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(render)
      .catch(function (error) {
        var note = document.createElement("p");
        note.className = "text-danger";
        note.textContent = "The charts could not be loaded (" + error.message + "); the CSV links still work.";
        element.parentNode.insertBefore(note, element);
      });
  }

  load("charts", analytics);
  load("revenue-chart", revenue);
})();
