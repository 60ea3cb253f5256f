/**
 * The shared timing helper: cases run in interleaved rounds (every case once per round, warm-up rounds first and
 * thrown away), and each case reports the median of its measured rounds, so a slow stretch of the machine hits every
 * case alike instead of one case all at once.
 */

/** One thing to time. `run` does the whole job once and returns what `verify` checks, so no run measures nothing. */
export interface Case {
  readonly name: string
  /** Input octets processed by one run, for MB/s. */
  readonly bytes: number
  /** Items (e.g. replies) produced by one run, for items/s; leave out when there is nothing to count. */
  readonly items?: number | undefined
  /** The one the ratio column divides by, e.g. the chunked copy; the first case when none is marked. */
  readonly baseline?: boolean | undefined
  /**
   * How many times one timed sample calls `run`, back to back; the sample is divided by it. For cases so fast that
   * one run is over in a few tens of milliseconds, where timer and scheduling noise would swamp a single run.
   */
  readonly repeat?: number | undefined
  readonly run: () => number | Promise<number>
  /**
   * Throws (or rejects) when a run's result is wrong. Runs after the clock stops, so it may wait, e.g. for a server
   * to report what it received.
   */
  readonly verify: (result: number) => void | Promise<void>
}

export interface Options {
  readonly warmupRounds: number
  readonly rounds: number
}

export interface Result {
  readonly name: string
  readonly bytes: number
  readonly items: number | undefined
  readonly baseline: boolean
  /** Milliseconds per run of every measured round, in round order. */
  readonly samples: ReadonlyArray<number>
  readonly medianMs: number
}

export const median = (values: ReadonlyArray<number>): number => {
  if (values.length === 0) throw new Error("median of no values")
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Times one sample: `repeat` runs back to back, each checked after the clock stops. Returns ms per run. */
const timeOnce = async (c: Case): Promise<number> => {
  const repeat = c.repeat ?? 1
  const results: Array<number> = []
  const start = performance.now()
  for (let i = 0; i < repeat; i++) {
    const pending = c.run()
    results.push(typeof pending === "number" ? pending : await pending)
  }
  const elapsed = performance.now() - start
  for (const result of results) await c.verify(result)
  return elapsed / repeat
}

/** Runs the cases in interleaved rounds and returns one result per case, in the order given. */
export const measure = async (cases: ReadonlyArray<Case>, options: Options): Promise<ReadonlyArray<Result>> => {
  for (let round = 0; round < options.warmupRounds; round++) {
    for (const c of cases) await timeOnce(c)
  }
  const samples: ReadonlyArray<Array<number>> = cases.map(() => [])
  for (let round = 0; round < options.rounds; round++) {
    for (let i = 0; i < cases.length; i++) samples[i]!.push(await timeOnce(cases[i]!))
  }
  return cases.map((c, i) => ({
    name: c.name,
    bytes: c.bytes,
    items: c.items,
    baseline: c.baseline ?? false,
    samples: samples[i]!,
    medianMs: median(samples[i]!)
  }))
}

/** MB/s with MB = 10^6 octets. */
export const mbPerSecond = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1e3)

export const fixed = (value: number): string =>
  value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2)

const count = (value: number): string =>
  value >= 1e6 ? `${(value / 1e6).toFixed(2)} M` : value >= 1e3 ? `${(value / 1e3).toFixed(0)} k` : value.toFixed(0)

/**
 * Formats results as a plain-text table: MB/s from the median, the ratio of that to the baseline's MB/s, items/s
 * when counted, the slowest to fastest MB/s of the measured rounds (so the noise is visible) and the median ms.
 */
export const table = (title: string, results: ReadonlyArray<Result>, itemLabel = "items"): string => {
  const baseline = results.find((r) => r.baseline) ?? results[0]
  if (baseline === undefined) return title
  const baseRate = mbPerSecond(baseline.bytes, baseline.medianMs)
  const counted = results.some((r) => r.items !== undefined)
  const header = ["case", "MB/s", "x copy", ...(counted ? [`${itemLabel}/s`] : []), "MB/s range", "ms/run"]
  const rows = results.map((r) => {
    const rate = mbPerSecond(r.bytes, r.medianMs)
    const slowest = mbPerSecond(r.bytes, Math.max(...r.samples))
    const fastest = mbPerSecond(r.bytes, Math.min(...r.samples))
    const items = r.items === undefined ? "" : count(r.items / (r.medianMs / 1e3))
    return [
      r.name,
      fixed(rate),
      (rate / baseRate).toFixed(3),
      ...(counted ? [items] : []),
      `${fixed(slowest)}–${fixed(fastest)}`,
      r.medianMs.toFixed(1)
    ]
  })
  return columns(title, header, rows)
}

/** Lays out a plain-text table under `title`: the first column left-aligned, the others right-aligned. */
export const columns = (
  title: string,
  header: ReadonlyArray<string>,
  rows: ReadonlyArray<ReadonlyArray<string>>
): string => {
  const widths = header.map((h, col) => Math.max(h.length, ...rows.map((row) => row[col]!.length)))
  const line = (cells: ReadonlyArray<string>): string =>
    cells.map((cell, col) => col === 0 ? cell.padEnd(widths[col]!) : cell.padStart(widths[col]!)).join("  ")
  return [title, line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n")
}

/** A small seeded PRNG (mulberry32), so every run of the bench generates the same bytes. */
export { random } from "../test/support/helpers/random.js"
