#!/usr/bin/python3
"""aiosmtpd (Debian's python3-aiosmtpd) as an SMTP server with AUTH for the effect-smtp tests.

Usage: /usr/bin/python3 aiosmtpd_server.py CONFIG.json  (started by test/support/daemons/aiosmtpd.ts)

CONFIG.json holds: "directory" (the instance's folder), "host", "user" and "password" (the one account that AUTH
accepts), "starttls" (null, or {"cert": file, "key": file}: offer STARTTLS and AUTH only after it), "authRequired"
(refuse mail before AUTH), "pipelining" (advertise PIPELINING) and "smtputf8".

It listens on a free port and then writes it to DIRECTORY/port; every message accepted goes to
DIRECTORY/messages/NNNNNN.json (written whole, then renamed), before the reply to the final dot. Logs go to stderr.
It stops on SIGTERM or SIGINT, and when its stdin reaches end of file (the test process is gone).
"""
import asyncio
import base64
import hmac
import itertools
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import time

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

log = logging.getLogger("effect-smtp.aiosmtpd")


def write_atomically(path, data):
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


class Handler:
    def __init__(self, config):
        self.user = config["user"].encode("utf-8")
        self.password = config["password"].encode("utf-8")
        self.pipelining = config["pipelining"]
        self.messages = os.path.join(config["directory"], "messages")
        self.counter = itertools.count(1)

    def credentials_match(self, login, password):
        # Both compared in full, in constant time.
        return hmac.compare_digest(login, self.user) & hmac.compare_digest(password, self.password)

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        """The authenticator for aiosmtpd's own PLAIN and LOGIN."""
        ok = isinstance(auth_data, LoginPassword) and self.credentials_match(auth_data.login, auth_data.password)
        log.info("AUTH %s for %r: %s", mechanism, getattr(auth_data, "login", None), "accepted" if ok else "refused")
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def auth_CRAM__MD5(self, server, args):
        """AUTH CRAM-MD5 (RFC 2195): aiosmtpd names the mechanism after this method, "__" standing for "-"."""
        if len(args) > 1:
            await server.push("501 5.5.2 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = f"<{secrets.randbits(48)}.{int(time.time())}@localhost>".encode("ascii")
        response = await server.challenge_auth(challenge)
        if response is MISSING:
            # Cancelled with "*" or not base64: challenge_auth has replied already.
            return AuthResult(success=False, handled=True)
        login, _, digest = response.rpartition(b" ")
        expected = hmac.new(self.password, challenge, "md5").hexdigest().encode("ascii")
        ok = hmac.compare_digest(login, self.user) & hmac.compare_digest(digest.lower(), expected)
        log.info("AUTH CRAM-MD5 for %r: %s", login, "accepted" if ok else "refused")
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login, b"") if ok else None)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # With this hook, aiosmtpd leaves remembering the name to it.
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads every command from one buffer, in order: pipelined commands just work.
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):
        number = next(self.counter)
        auth_data = session.auth_data if session.authenticated else None
        login = auth_data.login.decode("utf-8", "replace") if isinstance(auth_data, LoginPassword) else None
        content = envelope.original_content or b""
        record = {
            # aiosmtpd keeps the null sender as "<>" (and strips the brackets of every other address).
            "mailFrom": "" if envelope.mail_from == "<>" else envelope.mail_from,
            "rcptTos": envelope.rcpt_tos,
            "mailOptions": envelope.mail_options,
            "rcptOptions": envelope.rcpt_options,
            "data": base64.b64encode(content).decode("ascii"),
            "login": login,
            "tls": session.ssl is not None,
            "helo": session.host_name,
        }
        write_atomically(os.path.join(self.messages, f"{number:06d}.json"), json.dumps(record).encode("utf-8"))
        log.info("message %d: %d bytes from %r to %r", number, len(content), envelope.mail_from, envelope.rcpt_tos)
        return f"250 2.0.0 Ok: queued as {number}"


async def serve(config):
    loop = asyncio.get_running_loop()
    handler = Handler(config)
    tls_context = None
    if config["starttls"] is not None:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(config["starttls"]["cert"], config["starttls"]["key"])

    def protocol():
        return SMTP(
            handler,
            hostname="localhost",
            ident="ESMTP effect-smtp test aiosmtpd",
            decode_data=False,
            enable_SMTPUTF8=config["smtputf8"],
            tls_context=tls_context,
            # AUTH before STARTTLS only when there is no TLS at all; with STARTTLS, only after it.
            auth_require_tls=tls_context is not None,
            auth_required=config["authRequired"],
            authenticator=handler.authenticator,
            loop=loop,
        )

    server = await loop.create_server(protocol, host=config["host"], port=0)
    port = server.sockets[0].getsockname()[1]
    log.info("listening on %s:%d (STARTTLS: %s)", config["host"], port, tls_context is not None)
    write_atomically(os.path.join(config["directory"], "port"), str(port).encode("ascii"))

    stopped = loop.create_future()

    def stop(reason):
        if not stopped.done():
            log.info("stopping: %s", reason)
            stopped.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signal.Signals(signum).name)

    class StdinWatch(asyncio.Protocol):
        def connection_lost(self, exc):
            stop("stdin closed")

    await loop.connect_read_pipe(StdinWatch, sys.stdin)
    await stopped
    server.close()


def main():
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # aiosmtpd warns about its own deprecated login_data at every AUTH.
    logging.getLogger("mail.log").addFilter(lambda record: "login_data is deprecated" not in record.getMessage())
    with open(sys.argv[1], encoding="utf-8") as file:
        config = json.load(file)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
