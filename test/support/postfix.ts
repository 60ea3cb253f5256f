/** The benchmarks (`bench/`) still import the Postfix harness from here; it lives in `daemons/postfix.ts`. */
export * from "./daemons/postfix.js"
