import type { Reporter, TestModule } from "vitest/node"

/**
 * Ends the run with the plain line CI reads, `Tests: N passed, N failed, N skipped`, counted from vitest's own results.
 */
export default class ClosingLineReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    let passed = 0
    let failed = 0
    let skipped = 0
    for (const module of testModules) {
      for (const test of module.children.allTests()) {
        const state = test.result().state
        if (state === "passed") passed++
        else if (state === "failed") failed++
        else skipped++
      }
    }
    // vitest prints its own summary after this hook; the plain line goes last, when the process exits.
    process.once("exit", () => process.stdout.write(`Tests: ${passed} passed, ${failed} failed, ${skipped} skipped\n`))
  }
}
