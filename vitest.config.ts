import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "examples/**/*.test.ts"],
    reporters: ["default", "./test/support/helpers/closingLineReporter.ts"],
    testTimeout: 30_000
  }
})
