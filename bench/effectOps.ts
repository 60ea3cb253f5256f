/**
 * Effect operations per message: how many effects the fiber runtime evaluates for one message of `sendAll`, counted
 * by a `Supervisor` with op supervision on, in every fiber of the send: the batch's (the engine), and those of the
 * stream that reads the results (`Stream.runCollect`, as a user would). Unlike CPU time this count does not move with the load of the machine, and
 * unlike an instruction count it needs nothing but Node.js, so a change to the hot path shows in it exactly.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Fiber from "effect/Fiber"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as RuntimeFlagsPatch from "effect/RuntimeFlagsPatch"
import * as Stream from "effect/Stream"
import * as Supervisor from "effect/Supervisor"
import * as SmtpConnection from "../src/SmtpConnection.js"
import type * as SmtpSubmission from "../src/SmtpSubmission.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { columns } from "./harness.js"
import type { Message } from "./messages.js"

/** Counts every effect evaluated while `counting` is on, by fiber. */
class OpCounter extends Supervisor.AbstractSupervisor<void> {
  counting = false
  readonly byFiber = new Map<number, number>()
  get value() {
    return Effect.void
  }
  override onEffect<A, E>(fiber: Fiber.RuntimeFiber<A, E>, _effect: Effect.Effect<unknown, unknown, unknown>): void {
    if (!this.counting) return
    const id = fiber.id().id
    this.byFiber.set(id, (this.byFiber.get(id) ?? 0) + 1)
  }
}

/** Sends `batch` over one connection to `port` twice, counting the second `sendAll`; logs the count per message. */
export const run = async (log: (line: string) => void, port: number, batch: ReadonlyArray<Message>): Promise<void> => {
  const counter = new OpCounter()
  const submissions = batch.map((m) => ({ envelope: { from: m.from, to: [m.to] }, body: m.body }))
  const sent = (results: Iterable<Either.Either<SmtpSubmission.SendResult, unknown>>) => {
    let n = 0
    for (const result of results) if (Either.isRight(result) && result.right.response.code === 250) n++
    if (n !== batch.length) throw new Error(`effect operations: ${n} of ${batch.length} messages sent`)
  }
  const program = Effect.gen(function*() {
    const connection = yield* SmtpConnection.make({ host: "127.0.0.1", port, tls: "none", clientName: "bench.example" })
    // The first batch warms the connection up; only the second is counted.
    sent(yield* Stream.runCollect(connection.sendAll(submissions)))
    counter.counting = true
    const results = yield* Stream.runCollect(connection.sendAll(submissions))
    counter.counting = false
    sent(results)
  }).pipe(
    Effect.scoped,
    Effect.provide(SmtpTransport.layerNode),
    Effect.supervised(counter),
    Effect.withRuntimeFlagsPatch(RuntimeFlagsPatch.enable(RuntimeFlags.OpSupervision))
  )
  await Effect.runPromise(program)
  const counts = [...counter.byFiber.values()].sort((x, y) => y - x)
  const total = counts.reduce((x, y) => x + y, 0)
  const per = (n: number) => (n / batch.length).toFixed(1)
  log(
    columns(
      `\nsmtp-server on loopback, ${batch.length} messages with sendAll on one connection: Effect operations per message`,
      ["fibers", "ops/msg, all fibers", "ops/msg, the busiest fiber"],
      [[String(counts.length), per(total), per(counts[0] ?? 0)]]
    )
  )
}
