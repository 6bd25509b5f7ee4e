// The live dashboard: listens to /api/stream (server-sent events) and draws plain SVG.
// No framework and no charting library: bars, a line and a map are a few lines each, and the
// page must work offline. The only vendored code is topojson-client, to unpack the world map.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BARS = 8;
const MAP = { width: 960, height: 400, top: 90, bottom: -60 }; // equirectangular, no Antarctica
const state = { window: "24h", source: null, summary: null, land: null };

const number = new Intl.NumberFormat();
const percent = (rate) => `${(100 * rate).toFixed(rate && rate < 0.1 ? 1 : 0)} %`;

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

function empty(svg, message) {
  const [, , w, h] = svg.getAttribute("viewBox").split(" ").map(Number);
  svg.appendChild(el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty" }, message));
}

// ---- headline numbers -------------------------------------------------------------------------

function renderCards(summary) {
  const values = { ...summary.totals, ...summary.conversion };
  for (const node of document.querySelectorAll("[data-metric]")) {
    const key = node.dataset.metric;
    const value = values[key];
    if (value === undefined) continue;
    node.dataset.value = String(value);
    node.textContent = key.endsWith("rate") ? percent(value) : number.format(value);
  }
}

// ---- horizontal bar charts --------------------------------------------------------------------

function placeLabel(row) {
  return row.city ? `${row.city}, ${row.country}` : `${row.region}, ${row.country}`;
}

function renderBars(svg, rows, field) {
  clear(svg);
  const shown = rows
    .filter((row) => row[field] > 0)
    .sort((a, b) => b[field] - a[field] || placeLabel(a).localeCompare(placeLabel(b)))
    .slice(0, BARS);
  svg.dataset.rows = String(shown.length);
  if (!shown.length) return empty(svg, "No data yet in this window");
  const max = Math.max(...shown.map((row) => row[field]));
  const labelWidth = 170;
  const barArea = 480 - labelWidth - 50;
  const step = 260 / BARS;
  shown.forEach((row, i) => {
    const y = i * step;
    const width = Math.max(2, (barArea * row[field]) / max);
    const group = el("g", { "data-label": placeLabel(row), "data-value": row[field] });
    const name = placeLabel(row);
    group.appendChild(el("text", { x: labelWidth - 8, y: y + step / 2 + 4, "text-anchor": "end", class: "label" },
      name.length > 21 ? `${name.slice(0, 20)}…` : name));
    group.appendChild(el("rect", { x: labelWidth, y: y + 5, width, height: step - 10, rx: 4, class: "bar" }));
    group.appendChild(el("text", { x: labelWidth + width + 6, y: y + step / 2 + 4, class: "value" },
      number.format(row[field])));
    group.appendChild(el("title", {}, `${name}: ${number.format(row[field])}`));
    svg.appendChild(group);
  });
}

// ---- funnel -----------------------------------------------------------------------------------

function renderFunnel(svg, totals) {
  clear(svg);
  const stages = [
    ["Visited", totals.visitors, "var(--visit)"],
    ["Opened the menu", totals.menu_viewers, "var(--menu)"],
    ["Ordered", totals.purchasers, "var(--order)"],
  ];
  const max = Math.max(1, totals.visitors);
  stages.forEach(([name, value, colour], i) => {
    const width = Math.max(4, (440 * value) / max);
    const y = 4 + i * 65;
    const group = el("g", { "data-label": name, "data-value": value });
    const share = i === 0 ? "" : ` (${percent(value / max)} of visitors)`;
    group.appendChild(el("text", { x: 240, y: y + 14, "text-anchor": "middle", class: "label" },
      `${name}: ${number.format(value)}${share}`));
    group.appendChild(el("rect", { x: (480 - width) / 2, y: y + 22, width, height: 34, rx: 6, fill: colour }));
    svg.appendChild(group);
  });
  svg.dataset.rows = "3";
}

// ---- per-minute trend -------------------------------------------------------------------------

function renderTrend(svg, allMinutes) {
  clear(svg);
  // Minutes before the first page view of the window are left out (a new café, a fresh demo),
  // but at least the last ten minutes are shown.
  const first = allMinutes.findIndex((p) => p.page_views > 0);
  const trend = allMinutes.slice(first < 0 ? 0 : Math.max(0, Math.min(first, allMinutes.length - 10)));
  svg.dataset.rows = String(trend.length);
  if (!trend.length) return empty(svg, "No page views yet");
  const left = 36, right = 470, top = 10, bottom = 175;
  const max = Math.max(1, ...trend.map((p) => p.page_views));
  const x = (i) => left + (trend.length === 1 ? (right - left) / 2 : (i * (right - left)) / (trend.length - 1));
  const y = (v) => bottom - ((bottom - top) * v) / max;
  for (const fraction of [0, 0.5, 1]) {
    const value = Math.round(max * fraction);
    svg.appendChild(el("line", { x1: left, x2: right, y1: y(value), y2: y(value), class: "grid" }));
    svg.appendChild(el("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", class: "axis" }, number.format(value)));
  }
  const points = trend.map((p, i) => `${x(i).toFixed(1)},${y(p.page_views).toFixed(1)}`);
  svg.appendChild(el("path", { d: `M${x(0)},${bottom} L${points.join(" L")} L${x(trend.length - 1)},${bottom} Z`, class: "trend-area" }));
  svg.appendChild(el("path", { d: `M${points.join(" L")}`, class: "trend-line" }));
  const time = (iso) => iso.slice(11, 16);
  svg.appendChild(el("text", { x: left, y: 195, class: "axis" }, `${time(trend[0].minute)} UTC`));
  svg.appendChild(el("text", { x: right, y: 195, "text-anchor": "end", class: "axis" }, time(trend[trend.length - 1].minute)));
}

// ---- world map --------------------------------------------------------------------------------

function project(lon, lat) {
  const scale = MAP.width / 360;
  return [(lon + 180) * scale, (MAP.top - lat) * scale];
}

function ringPath(ring, shift = 0) {
  return ring.map(([lon, lat], i) => {
    const [px, py] = project(lon + shift, lat);
    return `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`;
  }).join("") + "Z";
}

// Natural Earth's rings are on the sphere: Chukotka and Fiji cross the antimeridian. Unwrap
// each ring's longitudes so it stays continuous, and draw it again a world to the left or right
// when it sticks out; the viewBox clips the rest.
function unwrappedRingPaths(ring) {
  let offset = 0;
  const unwrapped = ring.map(([lon, lat], i) => {
    if (i) {
      const previous = ring[i - 1][0];
      if (lon - previous > 180) offset -= 360;
      else if (previous - lon > 180) offset += 360;
    }
    return [lon + offset, lat];
  });
  const lons = unwrapped.map(([lon]) => lon);
  const paths = [ringPath(unwrapped)];
  if (Math.max(...lons) > 180) paths.push(ringPath(unwrapped, -360));
  if (Math.min(...lons) < -180) paths.push(ringPath(unwrapped, 360));
  return paths.join("");
}

async function loadLand() {
  try {
    const topology = await (await fetch("/static/vendor/land-110m.json")).json();
    const land = topojson.feature(topology, topology.objects.land);
    const paths = [];
    for (const feature of land.features || [land]) {
      const geometry = feature.geometry;
      const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
      for (const polygon of polygons) {
        if (Math.max(...polygon[0].map(([, lat]) => lat)) < MAP.bottom) continue; // Antarctica
        paths.push(polygon.map(unwrappedRingPaths).join(""));
      }
    }
    state.land = paths.join("");
  } catch (error) {
    state.land = "";
  }
  if (state.summary) renderMap(document.getElementById("map"), state.summary.cities);
}

function renderMap(svg, cities) {
  clear(svg);
  if (state.land) svg.appendChild(el("path", { d: state.land, class: "land" }));
  const placed = cities.filter((c) => c.latitude !== null && c.longitude !== null && c.visitors > 0);
  svg.dataset.rows = String(placed.length);
  const max = Math.max(1, ...placed.map((c) => c.visitors));
  // Largest first, so small circles stay on top and can be hovered.
  for (const city of [...placed].sort((a, b) => b.visitors - a.visitors)) {
    const [cx, cy] = project(city.longitude, city.latitude);
    const circle = el("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: (3 + 17 * Math.sqrt(city.visitors / max)).toFixed(1),
      class: "city", "data-label": placeLabel(city), "data-value": city.visitors });
    circle.appendChild(el("title", {}, `${placeLabel(city)}: ${number.format(city.visitors)} visitors`));
    svg.appendChild(circle);
  }
}

// ---- conversion by city -----------------------------------------------------------------------

function renderConversion(table, cities) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  const shown = cities.filter((c) => c.visitors > 0).slice(0, BARS);
  table.dataset.rows = String(shown.length);
  const best = Math.max(0.0001, ...shown.map((c) => c.purchase_rate));
  for (const city of shown) {
    const row = document.createElement("tr");
    row.dataset.label = placeLabel(city);
    row.dataset.value = String(city.visitors);
    const cells = [placeLabel(city), number.format(city.visitors), number.format(city.menu_viewers),
      number.format(city.purchasers)];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    const rate = document.createElement("td");
    const value = document.createElement("span");
    value.className = "rate";
    value.textContent = percent(city.purchase_rate);
    const meter = document.createElement("span");
    meter.className = "meter";
    meter.style.width = `${(4 * city.purchase_rate) / best}rem`;
    rate.append(value, meter);
    row.appendChild(rate);
    body.appendChild(row);
  }
  if (!shown.length) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 5;
    cell.textContent = "No visitors yet in this window";
    row.appendChild(cell);
    body.appendChild(row);
  }
}

// ---- wiring -----------------------------------------------------------------------------------

function render(summary, version) {
  state.summary = summary;
  renderCards(summary);
  renderMap(document.getElementById("map"), summary.cities);
  renderFunnel(document.getElementById("funnel"), summary.totals);
  renderTrend(document.getElementById("trend"), summary.trend);
  const chart = (name) => document.querySelector(`[data-chart="${name}"]`);
  renderBars(chart("cities-menu"), summary.cities, "menu_viewers");
  renderBars(chart("cities-orders"), summary.cities, "purchasers");
  renderBars(chart("regions-visits"), summary.regions, "visitors");
  renderBars(chart("regions-orders"), summary.regions, "purchasers");
  renderConversion(document.getElementById("conversion"), summary.cities);
  document.body.dataset.version = String(version);
  document.body.dataset.window = summary.window;
  document.getElementById("status").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  document.getElementById("newest").textContent = summary.newest_event_time
    ? `Newest event: ${summary.newest_event_time.replace("T", " ").replace("Z", " UTC")}.` : "";
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(`/api/stream?window=${state.window}&limit=100`);
  state.source = source;
  source.addEventListener("summary", (event) => {
    document.body.dataset.state = "live";
    render(JSON.parse(event.data), event.lastEventId);
  });
  source.onerror = () => {
    document.body.dataset.state = "offline";
    document.getElementById("status").textContent = "reconnecting…";
  };
}

function chooseWindow(windowName) {
  state.window = windowName;
  for (const button of document.querySelectorAll("[data-window]")) {
    button.setAttribute("aria-pressed", String(button.dataset.window === windowName));
  }
  const url = new URL(location.href);
  url.searchParams.set("window", windowName);
  history.replaceState(null, "", url);
  connect();
}

for (const button of document.querySelectorAll("[data-window]")) {
  button.addEventListener("click", () => chooseWindow(button.dataset.window));
}
const requested = new URL(location.href).searchParams.get("window");
chooseWindow(["5m", "1h", "24h"].includes(requested) ? requested : "24h");
loadLand();
