// The model explorer: draws what the API answers, and nothing else. No build step; Plotly (vendored) draws.
//
// One POST /predict per redraw: every slice's points and the 2-D grid, as columns, in one batch. While a
// request is out, slider moves only mark the picture stale; when it comes back the latest values go out, so
// the pictures follow the sliders without piling up requests.
"use strict";

(() => {
  // This script is /STAGE/explore/explorer.js: the API is one level up, whatever the stage prefix.
  const API_ROOT = new URL("..", document.currentScript.src);
  // The page is /STAGE/explore (the packaged model, the root routes) or /STAGE/models/NAME/explore (a model of the
  // registry, "name" or "name@alias", and its routes under /models/NAME/): MODEL is NAME, or null.
  const MODEL = (() => {
    const match = /\/models\/([^/]+)\/explore\/?$/.exec(window.location.pathname);
    return match ? decodeURIComponent(match[1]) : null;
  })();
  const modelSegment = (name) => encodeURIComponent(name).replace(/%40/g, "@");
  // A model route's path, relative to the API: `root` on the packaged model, `underModel` under /models/NAME/.
  const modelPath = (root, underModel = root) => (MODEL === null ? root : `models/${modelSegment(MODEL)}/${underModel}`);
  const KEY_STORAGE = "gpr-surrogate-api-key";
  const SLICE_POINTS = 60; // per feature
  const GRID_POINTS = 25; // per side of the 2-D view
  // A redraw's batch sends every feature of every point: at most this many numbers (~4 MB of JSON, under the
  // API's 4.6 MB body limit). Past it, slices and the grid get coarser, down to these; a model wider still (~125
  // features) is not drawn, and the page says why.
  const MAX_BATCH_VALUES = 200000;
  const MIN_SLICE_POINTS = 12;
  const MIN_GRID_POINTS = 10;
  const SLIDER_STEPS = 200;
  // Training points drawn per slice, the nearest first: Plotly's SVG markers cost ~10 µs each per redraw, and a
  // model may publish 100,000 points.
  const MAX_NEAR_POINTS = 500;
  const SENSITIVITY_REQUEST = { n: 1024, posterior_samples: 0, seed: 1 };
  // The toolbar shows on hover (always, on a device that cannot hover), in the top margin (PLOT_TOP, at least its
  // height) above the plot area: never over the data.
  const PLOT_CONFIG = {
    displaylogo: false, responsive: true, displayModeBar: "hover", modeBarButtonsToRemove: ["lasso2d", "select2d"],
  };
  const PLOT_TOP = 34;
  const BAND_COLOUR = "rgba(31, 119, 180, 0.2)";
  const LINE_COLOUR = "rgb(31, 119, 180)";
  const POINT_COLOUR = "rgb(214, 39, 40)";

  const $ = (id) => document.getElementById(id);
  // Features and outputs are the model's own names, and `constructor`, `__proto__` or `toString` are legal ones:
  // every object indexed by a name has no prototype (nothing inherited to find, no `__proto__` setter to hit),
  // and is filled by assignment, which on such an object makes an own property that JSON.stringify writes.
  const byName = (entries = []) => {
    const map = Object.create(null);
    for (const [name, value] of entries) map[name] = value;
    return map;
  };
  // A name's entry of a parsed JSON object (JSON.parse makes own properties, even `__proto__`), never inherited.
  const own = (object, name) => (object != null && Object.hasOwn(object, name) ? object[name] : undefined);
  // "x1 (m)" where the manifest gives x1 a unit (its optional `units`: {name: unit}), else "x1".
  const titled = (name) => {
    const unit = state.model ? own(state.model.units, name) : undefined;
    return typeof unit === "string" && unit ? `${name} (${unit})` : name;
  };
  const state = {
    model: null, // GET /model
    values: byName(), // the sliders' values, by feature
    output: null,
    variance: "latent",
    featureA: null,
    featureB: null,
    last: null, // the last redraw: its batch, its answer (per output) and the values it was drawn at
    inFlight: false,
    stale: false,
    sensitivity: null, // POST /sensitivity's answer, per output
    resolution: null, // points per slice and per side of the grid (see resolution)
    training: null, // GET /model/training-data, where the manifest publishes it
    near: 0.15, // a training point is drawn on a slice within this distance of the sliders (see nearSlice)
    timings: [], // ms from a redraw's request to its pictures drawn
    requestTimings: [], // of which the request (POST /predict) took
    modelVersion: null, // X-Model-Version of the last answer drawn ("name/3"): which version computed it
  };
  // Read by the browser tests and by anyone measuring redraws in the console.
  window.explorer = { state, resolution, model: MODEL };

  // Points per slice and per side of the grid for a model of `features` features: as fine as one request allows
  // (at most `maxBatch` points, MAX_BATCH_VALUES numbers), or null if even the coarsest is too much.
  function resolution(features, maxBatch) {
    let slice = SLICE_POINTS;
    let grid = features >= 2 ? GRID_POINTS : 0;
    const points = () => features * slice + grid * grid;
    const fits = () => points() * features <= MAX_BATCH_VALUES && points() <= maxBatch;
    while (!fits() && slice > MIN_SLICE_POINTS) slice -= 1;
    while (!fits() && grid > MIN_GRID_POINTS) grid -= 1;
    return fits() ? { slice, grid } : null;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && Array.isArray(body.details) && body.details.length
        ? ` (${body.details.map((d) => `${d.field}: ${d.message}`).join("; ")})` : "";
      super(`HTTP ${status}: ${(body && (body.error || body.message)) || "no message"}${detail}`);
      this.status = status;
      this.body = body;
    }
  }

  // The answer's JSON, and the version that computed it (X-Model-Version) in `state.modelVersion` and on the page.
  async function call(method, path, body) {
    const headers = {};
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers["X-Api-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(new URL(path, API_ROOT), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
    let answer = null;
    try {
      answer = await response.json();
    } catch (_) {
      answer = null;
    }
    if (!response.ok) throw new ApiError(response.status, answer);
    const version = response.headers.get("X-Model-Version");
    if (version) {
      state.modelVersion = version;
      document.body.dataset.modelVersion = version;
      $("model-version").textContent = `Drawn by ${version}.`;
    }
    return answer;
  }

  function say(text, kind = "info") {
    const status = $("status");
    status.textContent = text;
    status.dataset.kind = kind;
  }

  // --- access -------------------------------------------------------------------------------------

  // API Gateway refuses a request without a valid key with 403 {"message": "Forbidden"}, and an unsigned one
  // (AuthMode IAM) with 403 and another message: only the first can be mended from here.
  function needsKey(error) {
    return error instanceof ApiError && error.status === 403 && error.body && error.body.message === "Forbidden";
  }

  function needsSignature(error) {
    return error instanceof ApiError && (error.status === 403 || error.status === 401) && error.body
      && typeof error.body.message === "string" && error.body.message !== "Forbidden";
  }

  function askForKey(wrong) {
    sessionStorage.removeItem(KEY_STORAGE);
    say(wrong ? "That key was refused: try another." : "This API needs a key.", wrong ? "error" : "info");
    document.body.dataset.state = "key";
    $("key-form").hidden = false;
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key-form").hidden = true;
    $("key-input").value = "";
    start();
  });

  // --- the model card and the controls ------------------------------------------------------------

  function text(tag, content, attributes = {}) {
    const element = document.createElement(tag);
    element.textContent = content;
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    return element;
  }

  function short(value) {
    return typeof value === "number" ? Number(value.toPrecision(7)).toString() : String(value);
  }

  function card(model) {
    $("title").textContent = `${model.name} — model explorer`;
    document.title = `${model.name} ${model.version}: model explorer`;
    const facts = $("card-facts");
    facts.replaceChildren();
    const kernel = model.kernel || {};
    const entries = [
      ["name", model.name],
      ["version", model.version],
      ["description", model.description || "—"],
      ["model", model.model_type],
      ["kernel", [kernel.name, kernel.ARD ? "ARD" : null].filter(Boolean).join(", ") || "—"],
      ["trained on", `${model.n_train} points`],
      ["outputs", model.outputs.join(", ")],
      ["checksum", `sha256 ${String(model.sha256).slice(0, 16)}…`],
    ];
    for (const [term, detail] of entries) {
      facts.append(text("dt", term), text("dd", detail));
    }
    const body = $("features-table").tBodies[0];
    body.replaceChildren();
    const limits = model.physical_limits || null;
    for (const feature of model.features) {
      const [low, high] = own(model.bounds, feature);
      const row = document.createElement("tr");
      row.append(text("th", titled(feature), { scope: "row" }), text("td", short(low)), text("td", short(high)),
        text("td", limits && Object.hasOwn(limits, feature) ? physical(own(limits, feature)) : "—"));
      body.append(row);
    }
    // Accuracy on the hold-out set and, for models packaged since, on the training points left out one at a time
    const sets = [["hold-out", model.holdout], ["leave-one-out", model.leave_one_out]].filter(([, metrics]) => metrics);
    $("metrics-table").hidden = sets.length === 0;
    $("metrics-none").hidden = sets.length > 0;
    if (sets.length) {
      const all = sets.flatMap(([, metrics]) => Object.values(metrics));
      const columns = [...new Set(all.flatMap((metrics) => Object.keys(metrics)))];
      const head = document.createElement("tr");
      head.append(text("th", "output", { scope: "col" }), text("th", "on", { scope: "col" }),
        ...columns.map((c) => text("th", c, { scope: "col" })));
      $("metrics-table").tHead.replaceChildren(head);
      const rows = sets.flatMap(([name, metrics]) => Object.entries(metrics).map(([output, values]) => {
        const row = document.createElement("tr");
        row.append(text("th", output, { scope: "row" }), text("td", name),
          ...columns.map((c) => text("td", Object.hasOwn(values, c) ? short(values[c]) : "—")));
        return row;
      }));
      $("metrics-table").tBodies[0].replaceChildren(...rows);
    }
    trainingNote(model);
  }

  // A physical limit for the card: "≥ 0", "≤ 1" or "[0, 1]" (either end may be open: null)
  function physical([low, high]) {
    if (low !== null && high !== null) return `[${short(low)}, ${short(high)}]`;
    return low !== null ? `≥ ${short(low)}` : `≤ ${short(high)}`;
  }

  function trainingNote(model) {
    const published = model.published_training_data;
    $("near-choice").hidden = !state.training || model.features.length < 2; // one feature: every point is on it
    if (!published) {
      $("training-note").textContent = `Training points are not drawn: this model's manifest does not publish the `
        + `${model.n_train} points it was trained on (its owner packages it with --publish-training-data to show them).`;
    } else if (!state.training) {
      $("training-note").textContent = "Training points are not drawn: GET /model/training-data did not answer.";
    } else {
      const where = published === "inputs"
        ? "as ticks along the foot of each slice (the manifest publishes their inputs, not their outputs)"
        : "as dots at their observed values";
      $("training-note").textContent = `Training points whose other features are near the sliders' values (root `
        + `mean square of each difference over the feature's range) are drawn ${where}; fainter is farther`
        + (state.training.n_points > MAX_NEAR_POINTS ? `, at most the ${MAX_NEAR_POINTS} nearest per slice.` : ".");
    }
  }

  function options(select, names, chosen) {
    select.replaceChildren(...names.map((name) => {
      const option = text("option", name, { value: name });
      option.selected = name === chosen;
      return option;
    }));
  }

  function controls(model) {
    const sliders = $("sliders");
    sliders.replaceChildren();
    state.values = byName();
    for (const feature of model.features) {
      const [low, high] = own(model.bounds, feature);
      const step = (high - low) / SLIDER_STEPS;
      const id = `slider-${feature}`;
      const input = document.createElement("input");
      Object.assign(input, { type: "range", id, min: String(low), max: String(high), step: String(step) });
      input.value = String(low + (SLIDER_STEPS / 2) * step);
      input.dataset.feature = feature;
      const readout = text("output", "", { for: id });
      const row = document.createElement("div");
      row.className = "slider";
      row.append(text("label", titled(feature), { for: id }), input, readout);
      sliders.append(row);
      state.values[feature] = Number(input.value);
      readout.textContent = short(state.values[feature]);
      input.addEventListener("input", () => {
        state.values[feature] = Number(input.value);
        readout.textContent = short(state.values[feature]);
        schedule();
      });
    }
    state.output = model.outputs[0];
    options($("output-select"), model.outputs, state.output);
    $("output-choice").hidden = model.outputs.length < 2;
    state.featureA = model.features[0];
    state.featureB = model.features[1] || null;
    $("contour-section").hidden = model.features.length < 2;
    if (model.features.length >= 2) {
      options($("feature-a"), model.features, state.featureA);
      options($("feature-b"), model.features, state.featureB);
    }
  }

  $("output-select").addEventListener("change", (event) => {
    state.output = event.target.value;
    if (state.last) draw(); // the answer has every output already
    drawSensitivity();
  });
  $("near-select").addEventListener("change", (event) => {
    state.near = Number(event.target.value);
    if (state.last) draw(); // nothing to ask the API: the points are here
  });
  $("variance-select").addEventListener("change", (event) => {
    state.variance = event.target.value;
    schedule();
  });
  // Two different features always: choosing the other picture's feature swaps the two.
  for (const [id, which, other, otherId] of [["feature-a", "featureA", "featureB", "feature-b"],
    ["feature-b", "featureB", "featureA", "feature-a"]]) {
    $(id).addEventListener("change", (event) => {
      if (event.target.value === state[other]) {
        state[other] = state[which];
        $(otherId).value = state[other];
      }
      state[which] = event.target.value;
      schedule();
    });
  }

  // --- one batch per redraw -----------------------------------------------------------------------

  // Ends exactly at the bounds (low + (high - low) can round past high, outside the model's domain).
  function linspace(low, high, count) {
    return Array.from({ length: count }, (_, i) => (i === count - 1 ? high : low + ((high - low) * i) / (count - 1)));
  }

  // Every slice's points, then the 2-D grid (row by row), as columns; `parts` says where each picture's points are.
  // The columns are a prototype-less object, so that JSON.stringify writes every feature's, whatever its name.
  function batch() {
    const features = state.model.features;
    const columns = byName(features.map((f) => [f, []]));
    const parts = [];
    let start = 0;
    const add = (point) => { // point: a Map of the features that differ from the sliders'
      for (const f of features) columns[f].push(point.has(f) ? point.get(f) : state.values[f]);
    };
    for (const feature of features) {
      const [low, high] = own(state.model.bounds, feature);
      const xs = linspace(low, high, state.resolution.slice);
      xs.forEach((x) => add(new Map([[feature, x]])));
      parts.push({ kind: "slice", feature, xs, start });
      start += xs.length;
    }
    const a = state.featureA;
    const b = state.featureB;
    if (a && b && a !== b) {
      const xs = linspace(...own(state.model.bounds, a), state.resolution.grid);
      const ys = linspace(...own(state.model.bounds, b), state.resolution.grid);
      for (const y of ys) for (const x of xs) add(new Map([[a, x], [b, y]]));
      parts.push({ kind: "grid", a, b, xs, ys, start });
      start += xs.length * ys.length;
    }
    return { columns, parts, size: start };
  }

  function perOutput(answer) {
    const outputs = state.model.outputs;
    return outputs.length === 1 ? byName([[outputs[0], answer]]) : byName(outputs.map((o) => [o, own(answer, o)]));
  }

  function schedule() {
    if (state.inFlight) {
      state.stale = true;
      return;
    }
    redraw();
  }

  async function redraw() {
    state.inFlight = true;
    document.body.dataset.state = "busy";
    const started = performance.now();
    try {
      const { columns, parts, size } = batch();
      const answer = await call("POST", `${modelPath("predict")}?variance=${state.variance}`, columns);
      const requested = performance.now() - started;
      state.last = { parts, size, answer: perOutput(answer), values: byName(Object.entries(state.values)) };
      await draw();
      const elapsed = performance.now() - started;
      state.timings.push(elapsed);
      state.requestTimings.push(requested);
      $("timing").textContent = `Last redraw: ${size} points in one request, ${elapsed.toFixed(0)} ms to the pictures `
        + `(${requested.toFixed(0)} ms of it the request).`;
      document.body.dataset.redraws = String(Number(document.body.dataset.redraws) + 1);
      say(`${state.model.features.length} feature(s), ${state.model.outputs.length} output(s): every picture is `
        + "this API's answer.");
    } catch (error) {
      failed(error);
    } finally {
      state.inFlight = false;
      if (state.stale) {
        state.stale = false;
        redraw();
      } else if (document.body.dataset.state === "busy") {
        document.body.dataset.state = "idle";
      }
    }
  }

  function failed(error) {
    if (needsKey(error)) {
      askForKey(Boolean(sessionStorage.getItem(KEY_STORAGE)));
    } else if (needsSignature(error)) {
      document.body.dataset.state = "refused";
      say("This API wants signed requests (AuthMode IAM), which a page cannot make: serve the model "
        + "locally (make serve) or open the page through a SigV4-signing proxy: docs/explorer.md, \"Access\".", "error");
    } else {
      document.body.dataset.state = "error";
      say(`Could not draw the model: ${error.message}`, "error");
    }
  }

  // --- the pictures -------------------------------------------------------------------------------

  function draw() {
    const { parts, answer, values } = state.last;
    const { mean, variance } = answer[state.output];
    const drawn = [];
    const slices = $("slices");
    for (const part of parts) {
      const m = mean.slice(part.start, part.start + (part.kind === "slice" ? part.xs.length : part.xs.length * part.ys.length));
      const s = variance.slice(part.start, part.start + m.length).map(Math.sqrt);
      if (part.kind === "slice") {
        let chart = $(`slice-${part.feature}`);
        if (!chart) {
          chart = text("div", "", { id: `slice-${part.feature}`, class: "chart slice-chart" });
          chart.dataset.feature = part.feature;
          slices.append(chart);
        }
        drawn.push(drawSlice(chart, part, m, s, values));
      } else {
        drawn.push(drawGrid(part, m, s, values));
      }
    }
    return Promise.all(drawn);
  }

  // The published training points near a slice: those whose other features are within `state.near` of the
  // sliders' values, as the root mean square of each difference over its feature's range.
  function nearSlice(feature, values) {
    const { features, bounds } = state.model;
    const others = features.filter((f) => f !== feature);
    const inputs = state.training.inputs;
    const near = [];
    const columns = others.map((f) => [own(inputs, f), values[f], ...own(bounds, f)]);
    for (let i = 0; i < state.training.n_points; i += 1) {
      let sum = 0;
      for (const [column, value, low, high] of columns) {
        sum += ((column[i] - value) / (high - low)) ** 2;
      }
      const distance = others.length ? Math.sqrt(sum / others.length) : 0;
      if (distance <= state.near) near.push({ index: i, distance });
    }
    if (near.length <= MAX_NEAR_POINTS) return near;
    // The nearest, in the points' own order. Ties (every point, with one feature) go to a fixed scramble of the
    // indices, not the first ones: a training set sorted along a feature would otherwise fill one end of it.
    const scramble = ({ index }) => Math.imul(index, 2654435761) >>> 0;
    near.sort((a, b) => a.distance - b.distance || scramble(a) - scramble(b));
    return near.slice(0, MAX_NEAR_POINTS).sort((a, b) => a.index - b.index);
  }

  function trainingTrace(feature, values) {
    const near = nearSlice(feature, values);
    const outputs = state.training.outputs;
    const limit = Number.isFinite(state.near) && state.near > 0 ? state.near : 1;
    const opacity = near.map(({ distance }) => 1 - 0.75 * Math.min(1, distance / limit));
    const column = own(state.training.inputs, feature);
    const trace = {
      x: near.map(({ index }) => column[index]),
      customdata: near.map(({ index, distance }) => [index, distance]),
      name: "training points", showlegend: false,
      hovertemplate: `${feature} %{x}<br>training point %{customdata[0]}, distance %{customdata[1]:.3f}<extra></extra>`,
    };
    if (outputs) {
      const observed = own(outputs, state.output);
      return { ...trace, y: near.map(({ index }) => observed[index]), mode: "markers",
        marker: { color: POINT_COLOUR, size: 6, opacity } };
    }
    // Inputs only: ticks along the foot of the chart, on an axis of their own spanning its height.
    return { ...trace, y: near.map(() => 0.03), yaxis: "y2", mode: "markers",
      marker: { symbol: "line-ns-open", color: POINT_COLOUR, size: 12, opacity, line: { width: 2 } } };
  }

  function drawSlice(chart, part, m, s, values) {
    const traces = [
      { x: part.xs, y: m.map((v, i) => v - 2 * s[i]), name: "lower", mode: "lines", line: { width: 0 },
        hoverinfo: "skip", showlegend: false },
      { x: part.xs, y: m.map((v, i) => v + 2 * s[i]), name: "upper", mode: "lines", line: { width: 0 },
        fill: "tonexty", fillcolor: BAND_COLOUR, hoverinfo: "skip", showlegend: false },
      { x: part.xs, y: m, name: "mean", mode: "lines", line: { color: LINE_COLOUR, width: 2 } },
    ];
    if (state.training) traces.push(trainingTrace(part.feature, values));
    const at = values[part.feature];
    const layout = {
      height: 240 + PLOT_TOP, margin: { l: 60, r: 10, t: PLOT_TOP, b: 45 }, showlegend: false,
      xaxis: { title: { text: titled(part.feature) }, range: own(state.model.bounds, part.feature) },
      yaxis: { title: { text: titled(state.output) } },
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      shapes: [{ type: "line", xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
        line: { dash: "dash", width: 1, color: "#555" } }],
    };
    return Plotly.react(chart, traces, layout, PLOT_CONFIG);
  }

  function rows(values, width) {
    return Array.from({ length: values.length / width }, (_, j) => values.slice(j * width, (j + 1) * width));
  }

  function drawGrid(part, m, s, values) {
    const width = part.xs.length;
    const here = { x: [values[part.a]], y: [values[part.b]], mode: "markers", name: "the sliders' point",
      marker: { symbol: "x", size: 10, color: "white", line: { color: "black", width: 1 } }, showlegend: false };
    // The title sits at the left of the top margin, the toolbar (on hover) at its right: neither over the data.
    const layout = (title) => ({
      height: 360, margin: { l: 60, r: 10, t: PLOT_TOP + 6, b: 45 }, title: { text: title, x: 0.02, xanchor: "left" },
      xaxis: { title: { text: titled(part.a) } }, yaxis: { title: { text: titled(part.b) } },
    });
    const picture = (id, z, title, colours) => Plotly.react($(id), [
      { type: "contour", x: part.xs, y: part.ys, z: rows(z, width), name: title, colorscale: colours,
        contours: { coloring: "heatmap" }, colorbar: { thickness: 12 } },
      here,
    ], layout(title), PLOT_CONFIG);
    return Promise.all([
      picture("contour-mean", m, `mean of ${titled(state.output)}`, "Viridis"),
      picture("contour-std", s, `standard deviation of ${titled(state.output)}`, "Cividis"),
    ]);
  }

  // --- sensitivity: POST /sensitivity, once ---------------------------------------------------------

  async function loadSensitivity() {
    const note = $("sensitivity-note");
    try {
      const answer = await call("POST", modelPath("sensitivity"), SENSITIVITY_REQUEST);
      state.sensitivity = perOutput(answer);
      await drawSensitivity();
      document.body.dataset.sensitivity = "drawn";
    } catch (error) {
      if (needsKey(error)) return failed(error);
      // 501: a model served through GPy has no analyses. (GET /model was let through, so a 403 here would be API
      // Gateway's for a path it does not have, as a 404 is ours: a deployment older than the route.)
      const unavailable = error instanceof ApiError && [403, 404, 405, 501].includes(error.status);
      document.body.dataset.sensitivity = unavailable ? "unavailable" : "error";
      $("sensitivity").hidden = true;
      note.textContent = `No Sobol' indices to show: ${error.message}`;
    }
  }

  function drawSensitivity() {
    if (!state.sensitivity) return Promise.resolve();
    const result = state.sensitivity[state.output];
    const features = state.model.features;
    const level = Math.round(100 * (result.confidence || 0.95));
    // Bars at positions 0..n-1 labelled with the names: Plotly keeps a category axis's names in a plain object,
    // where `constructor` or `__proto__` would be found before they are added.
    const positions = features.map((_, i) => i);
    const bars = (key, name, colour) => {
      const indices = features.map((f) => own(result[key], f));
      const estimates = indices.map((index) => index.estimate);
      return {
        type: "bar", name, x: positions, y: estimates, marker: { color: colour }, customdata: features,
        hovertemplate: "%{customdata}: %{y}<extra>" + name + "</extra>",
        // An interval that leaves out its estimate (a bootstrap's can) is drawn from the estimate.
        error_y: { type: "data", symmetric: false, thickness: 1.5,
          array: indices.map((index, i) => Math.max(0, index.ci_high - estimates[i])),
          arrayminus: indices.map((index, i) => Math.max(0, estimates[i] - index.ci_low)) },
      };
    };
    const variance = result.variance || {};
    $("sensitivity-note").textContent = `Sobol' indices of ${state.output}, ${level}% intervals: n = ${result.n}, ${result.evaluations} evaluations, seed ${result.seed}`
      + (result.posterior_samples ? `, ${result.posterior_samples} posterior samples` : ", posterior mean")
      + (variance.estimate !== undefined ? `; output variance ${short(variance.estimate)} `
        + `[${short(variance.ci_low)}, ${short(variance.ci_high)}].` : ".");
    return Plotly.react($("sensitivity"), [bars("first_order", "first order", "#1f77b4"), bars("total", "total", "#ff7f0e")], {
      barmode: "group", height: 320 + PLOT_TOP, margin: { l: 60, r: 10, t: PLOT_TOP, b: 45 },
      xaxis: { tickmode: "array", tickvals: positions, ticktext: features.map(titled) },
      yaxis: { title: { text: "Sobol' index" }, rangemode: "tozero" }, legend: { orientation: "h" },
    }, PLOT_CONFIG);
  }

  // --- the model picker: GET /models ------------------------------------------------------------------

  // Every model GET /models lists, one entry per alias ("name@alias"; the packaged model is the root page). Choosing
  // one opens its page, which loads its manifest, training data and predictions from its own routes.
  async function loadModels() {
    let listing;
    try {
      listing = await call("GET", "models");
    } catch (_) {
      return; // an API without the registry's routes (older, or refusing): the page draws the packaged model alone
    }
    const select = $("model-select");
    const models = Array.isArray(listing && listing.models) ? listing.models : [];
    const packaged = models.find((model) => model.source === "packaged");
    // The packaged model by name (/models/NAME/explore, NAME@live) is the root page's model: its entry is chosen.
    const named = MODEL === null ? null : (MODEL.includes("@") ? MODEL : `${MODEL}@live`);
    const chosen = named === null || (packaged && named === `${packaged.name}@live`) ? "" : named;
    const entries = [];
    for (const model of models) {
      if (typeof model.name !== "string") continue;
      if (model.source === "packaged") {
        entries.push({ value: "", label: `${model.name} (packaged, version ${model.latest_version})` });
        continue;
      }
      const aliases = Object.entries(model.aliases || {});
      if (!aliases.length) {
        entries.push({ value: null, label: `${model.name} (no alias yet: nothing served by name)` });
      }
      for (const [alias, target] of aliases) {
        if (!target) continue;
        const share = target.canary ? Math.round(target.canary.weight * 1000) / 10 : 0;
        const canary = target.canary ? `, canary ${target.canary.version} at ${share}%` : "";
        entries.push({ value: `${model.name}@${alias}`, label: `${model.name}@${alias} (version ${target.version}${canary})` });
      }
    }
    if (!entries.some((entry) => entry.value === chosen)) {
      entries.unshift({ value: chosen, label: MODEL === null ? "the packaged model" : MODEL });
    }
    select.replaceChildren(...entries.map((entry) => {
      const option = text("option", entry.label, { value: entry.value ?? "" });
      option.disabled = entry.value === null;
      option.selected = entry.value === chosen;
      return option;
    }));
    select.onchange = () => { // a property, not a listener: start() runs again once a key is given
      const value = select.value;
      window.location.assign(new URL(value ? `models/${modelSegment(value)}/explore` : "explore", API_ROOT));
    };
    $("model-choice").hidden = false;
    document.body.dataset.models = String(entries.length);
  }

  // --- start --------------------------------------------------------------------------------------

  async function start() {
    document.body.dataset.state = "loading";
    say("Loading the model…");
    try {
      state.model = await call("GET", modelPath("model", "manifest"));
    } catch (error) {
      return failed(error);
    }
    loadModels(); // once the model answered: the key, if one is needed, is known
    if (state.model.published_training_data) {
      try {
        state.training = await call("GET", modelPath("model/training-data", "training-data"));
      } catch (error) {
        if (needsKey(error)) return failed(error);
        state.training = null; // the pictures go on without the points; the note says why
      }
    }
    card(state.model);
    const maxBatch = (state.model.limits && state.model.limits.max_batch_size) || 10000;
    state.resolution = resolution(state.model.features.length, maxBatch);
    if (!state.resolution) {
      document.body.dataset.state = "error";
      return say(`This model has ${state.model.features.length} features: too many for this page to draw in one `
        + `request of at most ${maxBatch} points (${MAX_BATCH_VALUES} numbers); the API answers as usual.`, "error");
    }
    controls(state.model);
    $("explorer").hidden = false;
    await Promise.all([redraw(), loadSensitivity()]);
  }

  start();
})();
