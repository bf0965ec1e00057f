"""Run the fake WeChat Official Account API (devtools/wechat_fake.py) until Ctrl-C.

    python manage.py fake_wechat --port 8765 --app-id wxdemo0000000000 --app-secret demo-secret
    # then, for the workers and the web process:
    WECHAT_API_BASE_URL=http://127.0.0.1:8765 WECHAT_APP_ID=wxdemo0000000000 \\
        WECHAT_APP_SECRET=demo-secret WECHAT_TOKEN=demo-callback-token
    # with the push that settles publications at once:
    python manage.py fake_wechat ... --callback-url http://127.0.0.1:8000/wechat/callback --token demo-callback-token
"""

import logging
import signal
import sys

from django.core.management.base import BaseCommand, CommandError

from devtools.wechat_fake import FakeWechat


class Command(BaseCommand):
    help = "Run a fake WeChat Official Account API on this machine, so the WeChat jobs work without an account."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
        parser.add_argument("--app-id", default="wxdemo0000000000", help="the only app id it accepts")
        parser.add_argument("--app-secret", default="demo-secret", help="the only app secret it accepts")
        parser.add_argument("--publish-polls", type=int, default=1,
                            help="a publication settles at this freepublish/get of it (default 1; 0: never by polls)")
        parser.add_argument("--publish-seconds", type=float, default=3.0,
                            help="...or this many seconds after the submit (default 3; negative: never by time)")
        parser.add_argument("--publish-status", type=int, default=0, choices=range(0, 7),
                            help="publish_status it settles to (0 published, 2/3/4 failures; default 0)")
        parser.add_argument("--callback-url", default="",
                            help="POST the signed PUBLISHJOBFINISH push here when a publication settles "
                                 "(e.g. http://127.0.0.1:8000/wechat/callback)")
        parser.add_argument("--token", default="",
                            help="the callback token to sign pushes with (the app's WECHAT_TOKEN)")
        parser.add_argument("--token-ttl", type=int, default=7200, help="access token life in seconds (default 7200)")
        parser.add_argument("--callback-mode", default="plaintext", choices=["plaintext", "compatible", "safe"],
                            help="message mode of the pushes, as set in the account console (default plaintext)")
        parser.add_argument("--encoding-aes-key", default="",
                            help="EncodingAESKey for compatible and safe mode (the app's WECHAT_ENCODING_AES_KEY)")
        parser.add_argument("--push-timeout", type=float, default=5.0,
                            help="seconds a push waits for the answer before it is retried, 3 times (default 5)")

    def handle(self, *args, host, port, app_id, app_secret, publish_polls, publish_seconds, publish_status,
               callback_url, token, token_ttl, callback_mode, encoding_aes_key, push_timeout, **options):
        if callback_url and not token:
            raise CommandError("--callback-url needs --token (the WECHAT_TOKEN the callback checks signatures with)")
        if callback_mode != "plaintext" and len(encoding_aes_key) != 43:
            raise CommandError(f"--callback-mode {callback_mode} needs --encoding-aes-key (43 characters)")
        logging.getLogger("devtools.wechat_fake").setLevel(logging.INFO)
        try:
            fake = FakeWechat(app_id=app_id, app_secret=app_secret, host=host, port=port,
                              publish_polls=publish_polls or None,
                              publish_seconds=publish_seconds if publish_seconds >= 0 else None,
                              publish_status=publish_status, callback_url=callback_url, callback_token=token,
                              token_ttl=token_ttl, callback_mode=callback_mode, encoding_aes_key=encoding_aes_key,
                              log_calls=True)
            fake.push_timeout = push_timeout
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None
        settles = " or ".join(filter(None, [publish_polls and f"at freepublish/get #{publish_polls}",
                                            publish_seconds >= 0 and f"{publish_seconds:g} s after submit"]))
        self.stdout.write(
            f"fake WeChat API on {fake.base_url} (app id {app_id}); publications settle {settles or 'never'}"
            + (f", pushed to {callback_url} ({callback_mode} mode)" if callback_url else "") + "\n"
            f"point the app at it: WECHAT_API_BASE_URL={fake.base_url} WECHAT_APP_ID={app_id} "
            "WECHAT_APP_SECRET=<--app-secret>" + (" WECHAT_TOKEN=<--token>" if callback_url else ""))
        self.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            fake.server.serve_forever()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            fake.stop_timers()
            fake.server.server_close()
