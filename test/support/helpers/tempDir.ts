import * as Effect from "effect/Effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

/** A fresh temporary directory, removed with its contents when the scope closes. */
export const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "effect-smtp-message-"))
  return Effect.acquireRelease(Effect.succeed(dir), () => Effect.sync(() => rmSync(dir, { recursive: true })))
}
