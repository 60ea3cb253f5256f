/** The Maildir a real server delivers into, read by its harness. */
import { Clock, Duration, Effect, Schedule } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"

/** One file from the Maildir, with the envelope the server put on top of the message. */
export interface MaildirMessage {
  readonly file: string
  readonly bytes: Uint8Array
  /** The bytes decoded as UTF-8. */
  readonly raw: string
  /** The envelope sender, without angle brackets ("" for the null sender). */
  readonly returnPath: string | undefined
  /** The envelope recipient this copy was delivered for. */
  readonly deliveredTo: string | undefined
}

/** The header fields the server adds with the envelope sender and the recipient of the copy. */
export interface EnvelopeHeaders {
  readonly returnPath: string
  readonly deliveredTo: string
}

export interface Maildir {
  /** Every message delivered so far (Maildir `new/` and `cur/`), oldest first. */
  readonly messages: () => Effect.Effect<ReadonlyArray<MaildirMessage>>
  /** Polls until at least `count` messages were delivered (delivery is asynchronous); fails with the log on timeout. */
  readonly waitForMessages: (
    count: number,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<ReadonlyArray<MaildirMessage>, Error>
}

const headerValue = (raw: string, name: string): string | undefined => {
  const headerEnd = raw.search(/\r?\n\r?\n/)
  const unfolded = (headerEnd >= 0 ? raw.slice(0, headerEnd) : raw).replace(/\r?\n[ \t]+/g, " ")
  const prefix = `${name.toLowerCase()}:`
  const line = unfolded.split(/\r?\n/).find((l) => l.toLowerCase().startsWith(prefix))
  return line?.slice(prefix.length).trim()
}

const readMaildir = (maildir: string, headers: EnvelopeHeaders): ReadonlyArray<MaildirMessage> => {
  const found: Array<{ message: MaildirMessage; mtime: number }> = []
  for (const folder of ["new", "cur"]) {
    let names: Array<string>
    try {
      names = fs.readdirSync(path.join(maildir, folder))
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") continue
      throw error
    }
    for (const name of names) {
      const file = path.join(maildir, folder, name)
      const bytes = fs.readFileSync(file)
      const raw = bytes.toString("utf8")
      const returnPath = headerValue(raw, headers.returnPath)?.replace(/^<(.*)>$/, "$1")
      const deliveredTo = headerValue(raw, headers.deliveredTo)
      found.push({
        message: { file, bytes: new Uint8Array(bytes), raw, returnPath, deliveredTo },
        mtime: fs.statSync(file).mtimeMs
      })
    }
  }
  return found.sort((a, b) => a.mtime - b.mtime || a.message.file.localeCompare(b.message.file)).map((f) => f.message)
}

/** The Maildir in `directory`, its envelope read from `headers`; a timeout's error shows `log()`. */
export const openMaildir = (directory: string, headers: EnvelopeHeaders, log: () => string): Maildir => {
  const messages = () => Effect.sync(() => readMaildir(directory, headers))
  const waitForMessages = (count: number, timeout: Duration.DurationInput = "10 seconds") =>
    messages().pipe(
      Effect.filterOrFail((found) => found.length >= count, () => new Error("not yet")),
      Effect.retry(Schedule.spaced("25 millis")),
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () =>
          new Error(
            `expected ${count} delivered message(s) within ${Duration.format(Duration.decode(timeout))}, found ${
              readMaildir(directory, headers).length
            }\n${log()}`
          )
      }),
      Effect.withClock(Clock.make())
    )
  return { messages, waitForMessages }
}
