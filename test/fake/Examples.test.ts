import { describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { promisify } from "node:util"

const run = async (file: string) => {
  const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", file], { timeout: 60_000 })
  return stdout
}

describe("examples", () => {
  it("npm start sends a real message to the embedded server and prints what it received", async () => {
    const stdout = await run("examples/main.ts")
    expect(stdout).toMatch(/^Sent one message to the embedded SMTP server on 127\.0\.0\.1:\d+: Ok: queued as EXAMPLE/)
    expect(stdout).toContain("C: MAIL FROM:<demo@example.org>")
    expect(stdout).toContain("C: QUIT")
    expect(stdout).toContain("  | .A line starting with a dot is dot-stuffed on the wire and arrives intact.")
  })

  it("the step-by-step and streaming examples run", async () => {
    expect(await run("examples/commands.ts")).toContain("Refused before sending: Invalid RCPT TO address")
    expect(await run("examples/stream.ts")).toContain("The server received 10003 lines.")
  })

  it("the client and bulk examples run: a pooled client in a layer graph, progress, metrics", async () => {
    const client = await run("examples/client.ts")
    expect(client).toMatch(/^Sent the welcome message <[^>]+@example\.org>$/m)
    expect(client).toContain("The server received it for new.user@example.org")
    const bulk = await run("examples/bulk.ts")
    expect(bulk).toContain("100 of 500 sent")
    expect(bulk).toContain("500 of 500 sent")
    expect(bulk).toContain("Done: 500 accepted, 0 failed; the server has 500.")
    expect(bulk).toContain("smtp_client_messages_sent is 500")
  })
})
