/** The benchmarks (`bench/`) still import the seeded generator from here; it lives in `helpers/random.ts`. */
export * from "./helpers/random.js"
