/**
 * The sans-IO half of `Message`: checks a structured message, derives its envelope and Message-ID, and maps it onto
 * the options of Nodemailer's mail composer and DKIM signer. Nothing here reads a file or runs a stream.
 */
import * as Either from "effect/Either"
import * as Predicate from "effect/Predicate"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import { createPrivateKey, randomUUID } from "node:crypto"
import type { Readable } from "node:stream"
import addressparser from "nodemailer/lib/addressparser"
import type { DKIMOptions } from "nodemailer/lib/dkim"
import type { MailComposerAttachment, MailComposerOptions } from "nodemailer/lib/mail-composer"
import type { MimeNodeAddress, MimeNodeHeader } from "nodemailer/lib/mime-node"
import * as Mailbox from "../Mailbox.js"
import type * as Message from "../Message.js"
import { InvalidInputError } from "../SmtpError.js"

/** What a content becomes once it is read: text, bytes, or a Node stream for Nodemailer to pull from. */
export type NodeContent = string | Buffer | Readable

/** The envelope, headers and parts of a checked message, ready for the composer. */
export interface Plan<E, R> {
  readonly envelope: Message.Envelope
  readonly messageId: string
  readonly date: Date
  readonly from: ReadonlyArray<MimeNodeAddress>
  readonly sender: MimeNodeAddress | undefined
  readonly to: ReadonlyArray<MimeNodeAddress>
  readonly cc: ReadonlyArray<MimeNodeAddress>
  readonly bcc: ReadonlyArray<MimeNodeAddress>
  readonly replyTo: ReadonlyArray<MimeNodeAddress>
  readonly subject: string | undefined
  readonly headers: ReadonlyArray<MimeNodeHeader>
  readonly text: Message.Content<E, R> | undefined
  readonly html: Message.Content<E, R> | undefined
  readonly attachments: ReadonlyArray<Message.Attachment<E, R>>
  readonly dkim: Message.DkimOptions | undefined
}

/** CR, LF and NUL end or corrupt a header line; nothing in a header may hold them. */
const LINE_BREAKING = /[\r\n\0]/

// RFC 5322 §3.6.8: a field name is printable US-ASCII except the colon.
const FIELD_NAME = /^[\x21-\x39\x3B-\x7E]+$/

/**
 * Headers the structured fields own. Setting them as custom headers would either be overwritten (From, Subject, …),
 * leak (Bcc) or break the MIME structure (Content-Type, …), so they are refused with a pointer to the right field.
 */
const OWNED_HEADERS: Readonly<Record<string, string>> = {
  "from": "from",
  "sender": "sender",
  "to": "to",
  "cc": "cc",
  "bcc": "bcc",
  "reply-to": "replyTo",
  "subject": "subject",
  "message-id": "messageId",
  "date": "date",
  "mime-version": "",
  "content-type": "",
  "content-transfer-encoding": "",
  "dkim-signature": "dkim"
}

const fail = (field: string, reason: string) => Either.left(new InvalidInputError({ field, reason }))

/** Fails when a header text holds CR, LF or NUL. */
export const checkLine = (value: string, field: string): Either.Either<string, InvalidInputError> =>
  LINE_BREAKING.test(value)
    ? fail(field, "it holds a CR, LF or NUL, which would break the header")
    : Either.right(value)

const checkOptionalLine = (value: string | undefined, field: string) =>
  value === undefined ? Either.right(undefined) : checkLine(value, field)

/** The key under which two envelope recipients are the same: the domain is case-insensitive, the local part not. */
const recipientKey = (mailbox: Mailbox.Mailbox): string => `${mailbox.localPart}@${mailbox.domain.toLowerCase()}`

interface CheckedAddress {
  readonly mailbox: Mailbox.Mailbox
  readonly header: MimeNodeAddress
}

/**
 * Parses one address field: a string is read by Nodemailer's addressparser (so "Name <a@b>, c@d" works, and groups
 * are flattened into their members), an object is taken as it is. Every mailbox must pass `Mailbox.parse`.
 */
const checkAddresses = (
  input: Message.AddressInput | ReadonlyArray<Message.AddressInput> | undefined,
  label: string
): Either.Either<ReadonlyArray<CheckedAddress>, InvalidInputError> =>
  Either.gen(function*() {
    if (input === undefined) return []
    const inputs: ReadonlyArray<Message.AddressInput> = typeof input === "string" || !Array.isArray(input)
      ? [input as Message.AddressInput]
      : input
    const checked: Array<CheckedAddress> = []
    for (const entry of inputs) {
      const parsed: ReadonlyArray<{ readonly name: string; readonly address: string }> = typeof entry === "string"
        ? addressparser(yield* checkLine(entry, `${label} address`), { flatten: true })
        : [{ name: entry.name ?? "", address: entry.address }]
      if (typeof entry === "string" && parsed.length === 0) {
        return yield* fail(`${label} address`, "it holds no address")
      }
      for (const { address, name } of parsed) {
        yield* checkLine(name, `${label} display name`)
        yield* checkLine(address, `${label} address`)
        const mailbox = yield* Mailbox.parse(address, `${label} address`)
        checked.push({ mailbox, header: { name, address: Mailbox.format(mailbox) } })
      }
    }
    return checked
  })

/** Keeps the first of each recipient, in order. */
const dedupe = (mailboxes: ReadonlyArray<Mailbox.Mailbox>): ReadonlyArray<string> => {
  const seen = new Set<string>()
  const out: Array<string> = []
  for (const mailbox of mailboxes) {
    const key = recipientKey(mailbox)
    if (!seen.has(key)) {
      seen.add(key)
      out.push(Mailbox.format(mailbox))
    }
  }
  return out
}

const checkEnvelope = (
  envelope: { readonly from: string; readonly to: ReadonlyArray<string> }
): Either.Either<Message.Envelope, InvalidInputError> =>
  Either.gen(function*() {
    // "" is the null reverse-path `<>` (bounces), as SmtpConnection takes it.
    const from = envelope.from === "" ? "" : Mailbox.format(yield* Mailbox.parse(envelope.from, "envelope sender"))
    const to: Array<Mailbox.Mailbox> = []
    for (const recipient of envelope.to) to.push(yield* Mailbox.parse(recipient, "envelope recipient"))
    return { from, to: dedupe(to) }
  })

/**
 * A Message-ID as RFC 5322 §3.6.4 writes it, `<id-left@id-right>`; the brackets are added when missing. Only the
 * shape is checked: printable ASCII without space or angle brackets, one `@` with something either side.
 */
const checkMessageId = (messageId: string): Either.Either<string, InvalidInputError> =>
  Either.flatMap(checkLine(messageId, "Message-ID"), (id) => {
    const bare = id.startsWith("<") && id.endsWith(">") ? id.slice(1, -1) : id
    return /^[\x21-\x3B\x3D\x3F-\x7E]+@[\x21-\x3B\x3D\x3F-\x7E]+$/.test(bare) && bare.split("@").length === 2
      ? Either.right(`<${bare}>`)
      : fail("Message-ID", "it must be id-left@id-right in printable ASCII, without spaces or angle brackets")
  })

/** A fresh Message-ID on the sender's domain (Nodemailer's scheme), `localhost` for the null sender. */
const generateMessageId = (envelopeFrom: string): string => {
  const domain = envelopeFrom === "" ? "localhost" : envelopeFrom.slice(envelopeFrom.lastIndexOf("@") + 1)
  const ascii = Mailbox.domainToAscii(domain)
  return `<${randomUUID()}@${Either.isRight(ascii) && !ascii.right.startsWith("[") ? ascii.right : "localhost"}>`
}

const checkHeaders = (
  headers: Readonly<Record<string, string>> | undefined,
  owner: string
): Either.Either<ReadonlyArray<MimeNodeHeader>, InvalidInputError> =>
  Either.gen(function*() {
    const out: Array<MimeNodeHeader> = []
    for (const [name, value] of Object.entries(headers ?? {})) {
      const nameField = `${owner}header name ${JSON.stringify(name)}`
      if (!FIELD_NAME.test(name)) {
        return yield* LINE_BREAKING.test(name)
          ? fail(nameField, "it holds a CR, LF or NUL, which would break the header")
          : fail(nameField, "a header name is printable ASCII without spaces or colons")
      }
      const owned = owner === "" ? OWNED_HEADERS[name.toLowerCase()] : undefined
      if (owned !== undefined) {
        return yield* fail(
          nameField,
          owned === "" ? "the composer writes this header itself" : `set it with the message's \`${owned}\` field`
        )
      }
      if (typeof value !== "string") return yield* fail(`${owner}${name} header`, "a header value must be a string")
      out.push({ key: name, value: yield* checkLine(value, `${owner}${name} header`) })
    }
    return out
  })

/** Tells whether a content is an Effect stream. */
export const isStream = (content: unknown): content is Stream.Stream<Uint8Array, unknown, unknown> =>
  Predicate.hasProperty(content, Stream.StreamTypeId)

const checkContent = <E, R>(
  content: Message.Content<E, R> | undefined,
  field: string
): Either.Either<Message.Content<E, R> | undefined, InvalidInputError> => {
  if (
    content === undefined || typeof content === "string" || content instanceof Uint8Array || isStream(content)
  ) return Either.right(content)
  if (Predicate.hasProperty(content, "path") && typeof content.path === "string") {
    if (content.path === "") return fail(`${field} path`, "the path is empty")
    if (content.path.includes("\0")) return fail(`${field} path`, "a path cannot hold NUL")
    return Either.right(content)
  }
  return fail(field, "content must be a string, a Uint8Array, a Stream of Uint8Array or { path }")
}

const checkAttachment = <E, R>(
  attachment: Message.Attachment<E, R>,
  index: number
): Either.Either<Message.Attachment<E, R>, InvalidInputError> =>
  Either.gen(function*() {
    const label = `attachment ${index + 1}`
    yield* checkOptionalLine(attachment.filename, `${label} filename`)
    yield* checkOptionalLine(attachment.contentType, `${label} content type`)
    yield* checkOptionalLine(attachment.cid, `${label} cid`)
    if (attachment.cid !== undefined && !/^[\x21-\x3B\x3D\x3F-\x7E]+$/.test(attachment.cid)) {
      return yield* fail(`${label} cid`, "a Content-ID is printable ASCII without spaces or angle brackets")
    }
    const disposition = attachment.contentDisposition
    if (disposition !== undefined && disposition !== "attachment" && disposition !== "inline") {
      return yield* fail(`${label} content disposition`, "it must be \"attachment\" or \"inline\"")
    }
    yield* checkHeaders(attachment.headers, `${label} `)
    yield* checkContent(attachment.content, label)
    return attachment
  })

const dkimFieldList = (names: ReadonlyArray<string> | undefined, field: string) =>
  Either.gen(function*() {
    for (const name of names ?? []) {
      if (!FIELD_NAME.test(name)) return yield* fail(field, `${JSON.stringify(name)} is not a header field name`)
    }
    return names
  })

/**
 * Checks the DKIM options, the private key included: Nodemailer's signer leaves the signature out without a word when
 * the key cannot sign, so an unusable key must be caught here. The key is unwrapped only to be parsed.
 */
const checkDkim = (dkim: Message.DkimOptions): Either.Either<Message.DkimOptions, InvalidInputError> =>
  Either.gen(function*() {
    yield* Mailbox.validateDomain(dkim.domainName, "DKIM domain name")
    // RFC 6376 §3.1: the selector is sub-domain syntax, dot-separated labels.
    yield* Mailbox.validateDomain(dkim.keySelector, "DKIM key selector")
    if (dkim.keySelector.startsWith("[")) {
      return yield* fail("DKIM key selector", "a selector is not an address literal")
    }
    yield* dkimFieldList(dkim.headerFieldNames, "DKIM header field names")
    yield* dkimFieldList(dkim.skipFields, "DKIM skip fields")
    const key = Either.try(() => createPrivateKey(Redacted.value(dkim.privateKey)))
    if (Either.isLeft(key)) return yield* fail("DKIM private key", "it is not a PEM private key that Node can read")
    if (key.right.asymmetricKeyType !== "rsa") {
      return yield* fail("DKIM private key", "Nodemailer signs with rsa-sha256, so the key must be an RSA key")
    }
    if (dkim.cacheDir !== undefined) yield* checkLine(dkim.cacheDir, "DKIM cache directory")
    return dkim
  })

/**
 * Checks every address, name, header, content and option of a message, and derives the envelope (sender, else the
 * first From; To, Cc and Bcc deduplicated in order) unless one is given, the Message-ID and the Date (`now` unless
 * given).
 */
export const plan = <E, R>(
  message: Message.Message<E, R>,
  now: Date
): Either.Either<Plan<E, R>, InvalidInputError> =>
  Either.gen(function*() {
    const from = yield* checkAddresses(message.from, "from")
    if (from.length === 0) return yield* fail("from address", "a message needs a From address")
    const senders = yield* checkAddresses(message.sender, "sender")
    if (senders.length > 1) return yield* fail("sender address", "Sender holds exactly one address")
    const sender = senders[0]
    // RFC 5322 §3.6.2: several authors need a Sender to say which one sent it.
    if (from.length > 1 && sender === undefined) {
      return yield* fail("sender address", "a message with several From addresses needs a Sender")
    }
    const to = yield* checkAddresses(message.to, "to")
    const cc = yield* checkAddresses(message.cc, "cc")
    const bcc = yield* checkAddresses(message.bcc, "bcc")
    const replyTo = yield* checkAddresses(message.replyTo, "reply-to")
    const subject = yield* checkOptionalLine(message.subject, "subject")
    const messageId = message.messageId === undefined ? undefined : yield* checkMessageId(message.messageId)
    if (message.date !== undefined && Number.isNaN(message.date.getTime())) {
      return yield* fail("date", "it is not a valid Date")
    }
    const headers = yield* checkHeaders(message.headers, "")
    const text = yield* checkContent(message.text, "text")
    const html = yield* checkContent(message.html, "html")
    const attachments: Array<Message.Attachment<E, R>> = []
    for (const [i, attachment] of (message.attachments ?? []).entries()) {
      attachments.push(yield* checkAttachment(attachment, i))
    }
    const envelope = message.envelope === undefined
      ? {
        from: Mailbox.format((sender ?? from[0]!).mailbox),
        to: dedupe([...to, ...cc, ...bcc].map((a) => a.mailbox))
      }
      : yield* checkEnvelope(message.envelope)
    if (envelope.to.length === 0) {
      return yield* fail("envelope recipients", "there is no recipient: give to, cc, bcc or an envelope")
    }
    const dkim = message.dkim === undefined ? undefined : yield* checkDkim(message.dkim)
    return {
      envelope,
      messageId: messageId ?? generateMessageId(envelope.from),
      date: message.date ?? now,
      from: from.map((a) => a.header),
      sender: sender?.header,
      to: to.map((a) => a.header),
      cc: cc.map((a) => a.header),
      bcc: bcc.map((a) => a.header),
      replyTo: replyTo.map((a) => a.header),
      subject,
      headers,
      text,
      html,
      attachments,
      dkim
    }
  })

const nonEmpty = (addresses: ReadonlyArray<MimeNodeAddress>): Array<MimeNodeAddress> | undefined =>
  addresses.length === 0 ? undefined : [...addresses]

/** The last path segment, as Nodemailer names a file attachment by default. */
const basename = (path: string): string => path.split(/[/\\]/).pop() || "attachment"

/**
 * The composer's options for a plan, with each content already turned into something Nodemailer can read. File and
 * URL access are switched off: every byte comes through `content`, read by us.
 */
export const composerOptions = <E, R>(
  plan: Plan<E, R>,
  content: (content: Message.Content<E, R>) => NodeContent
): MailComposerOptions => {
  const options: MailComposerOptions = {
    from: [...plan.from],
    messageId: plan.messageId,
    date: plan.date,
    headers: [...plan.headers],
    disableFileAccess: true,
    disableUrlAccess: true
  }
  const set = <K extends keyof MailComposerOptions>(key: K, value: MailComposerOptions[K] | undefined) => {
    if (value !== undefined) options[key] = value
  }
  set("sender", plan.sender)
  set("to", nonEmpty(plan.to))
  set("cc", nonEmpty(plan.cc))
  set("bcc", nonEmpty(plan.bcc))
  set("replyTo", nonEmpty(plan.replyTo))
  set("subject", plan.subject)
  set("text", plan.text === undefined ? undefined : content(plan.text))
  set("html", plan.html === undefined ? undefined : content(plan.html))
  if (plan.attachments.length > 0) {
    options.attachments = plan.attachments.map((attachment): MailComposerAttachment => {
      const out: MailComposerAttachment = { content: content(attachment.content) }
      const source = attachment.content
      const filename = attachment.filename ??
        (Predicate.hasProperty(source, "path") && typeof source.path === "string" ? basename(source.path) : undefined)
      if (filename !== undefined) out.filename = filename
      if (attachment.contentType !== undefined) out.contentType = attachment.contentType
      if (attachment.cid !== undefined) out.cid = attachment.cid
      if (attachment.contentDisposition !== undefined) out.contentDisposition = attachment.contentDisposition
      if (attachment.headers !== undefined) {
        out.headers = Object.entries(attachment.headers).map(([key, value]) => ({ key, value }))
      }
      return out
    })
  }
  return options
}

/** The signer's options; the private key is unwrapped here, as it is handed to the signer. */
export const signerOptions = (dkim: Message.DkimOptions): DKIMOptions => {
  const options: DKIMOptions = {
    domainName: dkim.domainName,
    keySelector: dkim.keySelector,
    privateKey: Redacted.value(dkim.privateKey)
  }
  if (dkim.headerFieldNames !== undefined) options.headerFieldNames = dkim.headerFieldNames.join(":")
  if (dkim.skipFields !== undefined) options.skipFields = dkim.skipFields.join(":")
  if (dkim.cacheDir !== undefined) options.cacheDir = dkim.cacheDir
  if (dkim.cacheThreshold !== undefined) options.cacheTreshold = dkim.cacheThreshold
  return options
}
