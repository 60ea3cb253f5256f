/**
 * Client instructions per message, counted by `valgrind --tool=callgrind`: a count that does not move with the load
 * of a shared machine, where CPU time per message spreads by ±25% or more between rounds. Each client sends 200 and
 * then 1,200 messages, each time in a fresh process under callgrind (instructionClient.ts) to smtp-server in a child
 * of its own; the difference over the 1,000 extra messages leaves out the start of the process (loading modules,
 * compiling, connecting). Run only when named: `node .bench-build/bench/index.js instructions`; it needs valgrind
 * (Debian's `valgrind`) and takes about 4 minutes.
 */
import { spawn } from "node:child_process"
import { startChild } from "./child.js"
import { columns } from "./harness.js"

const SERVER_PROCESS = new URL("./serverProcess.js", import.meta.url)
const CLIENT = new URL("./instructionClient.js", import.meta.url)
const FEW = 200
const MANY = 1_200

/** Instructions callgrind counted for one client process sending `count` messages to `port`. */
const count = (port: number, client: "ours" | "nodemailer", messages: number): Promise<number> =>
  new Promise((resolve, reject) => {
    const args = ["--tool=callgrind", "--callgrind-out-file=/dev/null", process.execPath, CLIENT.pathname]
    const child = spawn("valgrind", [...args, String(port), String(messages), client], {
      stdio: ["ignore", "ignore", "pipe"]
    })
    let stderr = ""
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("error", reject)
    child.on("exit", (code) => {
      const collected = /Collected : (\d+)/.exec(stderr)
      if (code !== 0 || collected === null) reject(new Error(`${client}, ${messages} messages: ${stderr.slice(-2000)}`))
      else resolve(Number(collected[1]))
    })
  })

export const run = async (log: (line: string) => void): Promise<void> => {
  const server = await startChild(SERVER_PROCESS, ["smtp-server"])
  try {
    const port = Number(server.ready.port)
    const rows: Array<ReadonlyArray<string>> = []
    const perMessage = new Map<string, number>()
    for (const client of ["nodemailer", "ours"] as const) {
      const [few, many] = await Promise.all([count(port, client, FEW), count(port, client, MANY)])
      const each = (many - few) / (MANY - FEW)
      perMessage.set(client, each)
      rows.push([client, (few / 1e9).toFixed(3), (many / 1e9).toFixed(3), (each / 1e6).toFixed(2)])
    }
    const ratio = perMessage.get("ours")! / perMessage.get("nodemailer")!
    log(
      columns(
        `\nsmtp-server on loopback, one connection, messages of 5000 octets: client instructions (callgrind)`,
        ["client", `${FEW} msgs, G`, `${MANY} msgs, G`, "M instructions/msg"],
        rows
      )
    )
    log(`ours / Nodemailer: ${ratio.toFixed(3)}`)
  } finally {
    await server.close()
  }
}
