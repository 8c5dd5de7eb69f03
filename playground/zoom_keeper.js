// Keeps the zoom of the Monitor's charts across refreshes. Gradio draws every new figure in a new element, so
// plotly's uirevision (which keeps a zoom across Plotly.react on one element) never gets to act. This remembers
// each chart's axis ranges per uirevision (the runs and the x axis shown) and draws the next figure of that chart
// with them: no redraw shows it unzoomed. A double click (autorange) forgets them; another run or x axis has
// another uirevision, so it starts unzoomed.
const zooms = (window.__playgroundZooms = window.__playgroundZooms || {});
const AXIS_EDIT = /^([xy]axis\d*)\.(autorange|range)(\[([01])\])?$/;
const CHARTS = "#loss-plot, #health-plot, #hellaswag-plot";

function remember(key, edit) {
  const zoom = { ...(zooms[key] || {}) };
  for (const [name, value] of Object.entries(edit)) {
    const m = name.match(AXIS_EDIT);
    if (!m) continue;
    const axis = m[1];
    if (m[2] === "autorange") {
      if (value) delete zoom[axis];
    } else if (m[4] === undefined) {
      zoom[axis] = [value[0], value[1]];
    } else {
      zoom[axis] = zoom[axis] ? [...zoom[axis]] : [null, null];
      zoom[axis][Number(m[4])] = value;
    }
  }
  zooms[key] = zoom;
}

function zoomed(layout) {
  const zoom = zooms[layout && layout.uirevision];
  if (!zoom) return layout;
  const out = { ...layout };
  for (const [axis, range] of Object.entries(zoom)) {
    if (range[0] === null || range[1] === null) continue;
    out[axis] = { ...(layout[axis] || {}), range: [...range], autorange: false };
  }
  return out;
}

function wrap(plotly) {
  if (!plotly || plotly.__zoomKept) return plotly;
  const react = plotly.react.bind(plotly);
  plotly.react = (gd, data, layout, config) => {
    if (!(gd instanceof Element) || !gd.closest(CHARTS)) return react(gd, data, layout, config);
    const drawn = react(gd, data, zoomed(layout), config);
    if (!gd.__zoomKept && typeof gd.on === "function") {
      gd.__zoomKept = true;
      gd.on("plotly_relayout", (edit) => remember(gd._fullLayout.uirevision, edit));
    }
    return drawn;
  };
  plotly.__zoomKept = true;
  return plotly;
}

// Plotly is loaded with the first chart: wrap it as soon as it is set on window (or now, if it already is).
if (!Object.getOwnPropertyDescriptor(window, "Plotly")?.set) {
  let current = wrap(window.Plotly);
  Object.defineProperty(window, "Plotly", {
    configurable: true,
    get: () => current,
    set: (value) => {
      current = wrap(value);
    },
  });
}
