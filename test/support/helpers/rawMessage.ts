/** Reading a composed message back, the way a receiving server sees it: header fields, MIME parts, DKIM. */
import { expect } from "@effect/vitest"
import { createHash, verify } from "node:crypto"

/** The top-level header block, unfolded, as [name, value] pairs. */
const headersOf = (raw: string): ReadonlyArray<readonly [string, string]> =>
  raw.slice(0, raw.indexOf("\r\n\r\n")).replace(/\r\n[ \t]+/g, " ").split("\r\n").map((line) => {
    const colon = line.indexOf(":")
    return [line.slice(0, colon), line.slice(colon + 1).trim()] as const
  })

/** The first header field called `name` (in any case), unfolded. */
export const header = (raw: string, name: string): string | undefined =>
  headersOf(raw).find(([key]) => key.toLowerCase() === name.toLowerCase())?.[1]

/** The decoded body of the MIME part whose headers contain `marker`. */
export const partBody = (raw: string, marker: string): Buffer => {
  const at = raw.indexOf(marker)
  expect(at).toBeGreaterThan(-1)
  const headerStart = Math.max(0, raw.lastIndexOf("\r\n--", at))
  const bodyStart = raw.indexOf("\r\n\r\n", at) + 4
  const partHeaders = raw.slice(headerStart, bodyStart)
  const end = raw.indexOf("\r\n--", bodyStart)
  const body = raw.slice(bodyStart, end === -1 ? raw.length : end)
  if (/Content-Transfer-Encoding: base64/i.test(partHeaders)) return Buffer.from(body, "base64")
  if (/Content-Transfer-Encoding: quoted-printable/i.test(partHeaders)) {
    return Buffer.from(
      body.replace(/=\r\n/g, "").replace(/=([0-9A-F]{2})/g, (_, hex) => String.fromCharCode(parseInt(hex, 16))),
      "latin1"
    )
  }
  return Buffer.from(body, "latin1")
}

// -----------------------------------------------------------------------------
// A DKIM verifier written from RFC 6376, independent of Nodemailer's signer
// -----------------------------------------------------------------------------

/** RFC 6376 §3.4.4, relaxed body canonicalization. */
const relaxedBody = (body: string): string => {
  const lines = body.split("\r\n").map((line) => line.replace(/[ \t]+/g, " ").replace(/ $/, ""))
  if (lines[lines.length - 1] === "") lines.pop()
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop()
  return lines.length === 0 ? "" : lines.join("\r\n") + "\r\n"
}

/** RFC 6376 §3.4.2, relaxed header canonicalization of one raw (folded) header field. */
const relaxedHeader = (field: string): string => {
  const colon = field.indexOf(":")
  const name = field.slice(0, colon).trim().toLowerCase()
  const value = field.slice(colon + 1).replace(/\r\n/g, "").replace(/[ \t]+/g, " ").trim()
  return `${name}:${value}`
}

/** Verifies the first DKIM-Signature of a message with a public key; returns the tags and what held. */
export const verifyDkim = (raw: string, publicKey: string) => {
  const split = raw.indexOf("\r\n\r\n")
  const fields = raw.slice(0, split).split(/\r\n(?![ \t])/)
  const body = raw.slice(split + 4)
  const signature = fields.find((field) => /^dkim-signature:/i.test(field))!
  const tags = Object.fromEntries(
    signature.slice(signature.indexOf(":") + 1).split(";").map((tag) => tag.trim()).filter((tag) => tag !== "").map(
      (tag) => [tag.slice(0, tag.indexOf("=")).trim(), tag.slice(tag.indexOf("=") + 1).replace(/\s+/g, "")]
    )
  ) as Record<string, string>
  const bodyHash = createHash("sha256").update(relaxedBody(body), "latin1").digest("base64")
  // §5.4.2: for a name signed several times, instances are taken from the bottom up.
  const remaining = fields.filter((field) => field !== signature)
  const signed: Array<string> = []
  for (const name of tags.h!.split(":")) {
    let index = remaining.length - 1
    while (index >= 0 && remaining[index]!.slice(0, remaining[index]!.indexOf(":")).trim().toLowerCase() !== name) {
      index--
    }
    if (index === -1) continue
    signed.push(relaxedHeader(remaining[index]!) + "\r\n")
    remaining.splice(index, 1)
  }
  const unsigned = signature.replace(/(;\s*b=)[^;]*$/, "$1")
  const data = signed.join("") + relaxedHeader(unsigned)
  const valid = verify("RSA-SHA256", Buffer.from(data, "latin1"), publicKey, Buffer.from(tags.b!, "base64"))
  return { tags, bodyHash, valid }
}
