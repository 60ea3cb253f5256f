/**
 * The pool group's chart (docs/pool-scaling.svg): plain SVG, one panel per route (through the proxy, on loopback),
 * messages per second against connections in the pool, one line per server and client. The y axis is logarithmic, so
 * that Nodemailer's tens of messages per second and the raw client's thousands share a panel, and so that linear
 * scaling is the same slope for every line.
 */
/** One line: its rate at each of the panel's connection counts. */
export interface Series {
  readonly label: string
  readonly color: string
  /** An SVG `stroke-dasharray`, or "" for a solid line. */
  readonly dash: string
  readonly rates: ReadonlyArray<number>
}

export interface Panel {
  readonly title: string
  readonly connections: ReadonlyArray<number>
  readonly series: ReadonlyArray<Series>
}

const PANEL_WIDTH = 470
const PANEL_HEIGHT = 360
const LEFT = 60
const RIGHT = 20
const TOP = 40
const BOTTOM = 46
const LEGEND_ROW = 20

/** 1, 2 and 5 times the powers of ten from `low` to `high`: the grid values of a log axis. */
const logGrid = (low: number, high: number): ReadonlyArray<number> => {
  const values: Array<number> = []
  for (let power = Math.floor(Math.log10(low)) - 1; power <= Math.ceil(Math.log10(high)); power++) {
    for (const m of [1, 2, 5]) values.push(m * 10 ** power)
  }
  return values.filter((value) => value >= low && value <= high)
}

const label = (value: number): string => value >= 1_000 ? `${value / 1_000}k` : String(value)

/** One panel at `(x0, y0)`: axes, grid, and a line with a dot per figure for each series. */
const panel = (p: Panel, x0: number, y0: number): ReadonlyArray<string> => {
  const plotWidth = PANEL_WIDTH - LEFT - RIGHT
  const plotHeight = PANEL_HEIGHT - TOP - BOTTOM
  const all = p.series.flatMap((s) => s.rates).filter((r) => r > 0)
  // The axis runs from the grid value under the lowest rate to the one over the highest.
  const grid = logGrid(Math.min(...all) / 10, Math.max(...all) * 10)
  const low = grid.filter((value) => value <= Math.min(...all)).at(-1)!
  const high = grid.find((value) => value >= Math.max(...all) * 1.05)!
  const y = (value: number): number =>
    y0 + TOP + plotHeight - (Math.log10(value / low) / Math.log10(high / low)) * plotHeight
  const x = (i: number): number => x0 + LEFT + (plotWidth * (i + 0.5)) / p.connections.length
  const out: Array<string> = [
    `<text x="${x0 + LEFT + plotWidth / 2}" y="${y0 + 22}" text-anchor="middle" font-weight="bold">${p.title}</text>`
  ]
  for (const value of grid.filter((v) => v >= low && v <= high)) {
    const at = y(value).toFixed(1)
    out.push(
      `<line x1="${x0 + LEFT}" y1="${at}" x2="${x0 + LEFT + plotWidth}" y2="${at}" stroke="#dddddd"/>`,
      `<text x="${x0 + LEFT - 6}" y="${at}" text-anchor="end" dominant-baseline="middle">${label(value)}</text>`
    )
  }
  p.connections.forEach((n, i) => {
    out.push(
      `<text x="${x(i).toFixed(1)}" y="${y0 + TOP + plotHeight + 18}" text-anchor="middle">${n}</text>`
    )
  })
  for (const s of p.series) {
    const points = s.rates.map((r, i) => `${x(i).toFixed(1)},${y(r).toFixed(1)}`)
    out.push(
      `<polyline points="${points.join(" ")}" fill="none" stroke="${s.color}" stroke-width="2"` +
        `${s.dash === "" ? "" : ` stroke-dasharray="${s.dash}"`}/>`,
      ...s.rates.map((r, i) => `<circle cx="${x(i).toFixed(1)}" cy="${y(r).toFixed(1)}" r="3" fill="${s.color}"/>`)
    )
  }
  out.push(
    `<line x1="${x0 + LEFT}" y1="${y0 + TOP + plotHeight}" x2="${x0 + LEFT + plotWidth}" ` +
      `y2="${y0 + TOP + plotHeight}" stroke="#333333"/>`,
    `<line x1="${x0 + LEFT}" y1="${y0 + TOP}" x2="${x0 + LEFT}" y2="${y0 + TOP + plotHeight}" stroke="#333333"/>`,
    `<text x="${x0 + LEFT + plotWidth / 2}" y="${y0 + PANEL_HEIGHT - 8}" text-anchor="middle">` +
      "connections in the pool</text>",
    `<text transform="translate(${x0 + 16} ${y0 + TOP + plotHeight / 2}) rotate(-90)" text-anchor="middle">` +
      "messages per second (median, log scale)</text>"
  )
  return out
}

/** The panels side by side under a title, with one legend for the series of the first panel. */
export const scalingChart = (title: string, subtitle: string, panels: ReadonlyArray<Panel>): string => {
  const legend = panels[0]?.series ?? []
  const perRow = 3
  const legendHeight = Math.ceil(legend.length / perRow) * LEGEND_ROW + 10
  const width = PANEL_WIDTH * panels.length
  const height = 60 + PANEL_HEIGHT + legendHeight
  const out: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${title}</text>`,
    `<text x="${width / 2}" y="42" text-anchor="middle" fill="#555555">${subtitle}</text>`
  ]
  panels.forEach((p, i) => out.push(...panel(p, i * PANEL_WIDTH, 50)))
  const column = width / perRow
  legend.forEach((s, i) => {
    const x = Math.round(30 + (i % perRow) * column)
    const y = 60 + PANEL_HEIGHT + Math.floor(i / perRow) * LEGEND_ROW
    out.push(
      `<line x1="${x}" y1="${y}" x2="${x + 36}" y2="${y}" stroke="${s.color}" stroke-width="2"` +
        `${s.dash === "" ? "" : ` stroke-dasharray="${s.dash}"`}/>`,
      `<text x="${x + 44}" y="${y}" dominant-baseline="middle">${s.label}</text>`
    )
  })
  out.push("</svg>", "")
  return out.join("\n")
}
