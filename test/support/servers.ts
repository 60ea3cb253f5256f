import { accessSync, constants } from "node:fs"
import { delimiter, isAbsolute, join } from "node:path"

const announced = new Set<string>()

const isExecutable = (path: string): boolean => {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** Whether `binary` (an absolute path, or a name looked up on PATH like `which` does) can be executed. */
export const hasBinary = (binary: string): boolean =>
  isAbsolute(binary)
    ? isExecutable(binary)
    : (process.env.PATH ?? "").split(delimiter).some((dir) => dir !== "" && isExecutable(join(dir, binary)))

/**
 * Whether the real server `name` can be used by integration tests: true when every one of `binaries` is installed.
 *
 * When one is missing, in CI (`CI=true`) this throws, naming `install`, because CI may skip nothing; elsewhere it
 * prints one loud line to stderr (once per process and server) and returns false, for `describe.skipIf(!available)`.
 */
export const requireServer = (name: string, binaries: ReadonlyArray<string>, install: string): boolean => {
  const missing = binaries.filter((binary) => !hasBinary(binary))
  if (missing.length === 0) return true
  const reason = `${name} is not installed (missing ${missing.join(", ")}); install it with: ${install}`
  if (process.env.CI === "true") {
    throw new Error(`${name} tests cannot run in CI: ${reason}`)
  }
  if (!announced.has(name)) {
    announced.add(name)
    process.stderr.write(`SKIPPED: ${name} tests — ${reason}\n`)
  }
  return false
}
