#!/usr/bin/env bash
# The kiosk's screen: Chromium in kiosk mode on the daemon's own page ([screen] in config.toml).
# Installed by `install.sh --screen` as /usr/local/bin/voice-appliance-screen and started by the
# desktop's autostart entry (Raspberry Pi OS Desktop) or by voice-appliance-screen.service in cage
# (Raspberry Pi OS Lite). See docs/screen.md.
#
#   VOICE_APPLIANCE_SCREEN_URL   the page (default http://127.0.0.1:8790/, screen.bind and screen.port)
#
# No token is ever passed here: the kiosk's own browser reaches a loopback-bound server, which needs
# none (a token in a command line would be readable by every user of the machine).
set -euo pipefail

url=${VOICE_APPLIANCE_SCREEN_URL:-http://127.0.0.1:8790/}
case "$url" in
    *token=*) echo "voice-appliance-screen: no token in VOICE_APPLIANCE_SCREEN_URL (it would be in the process list); bind the screen to 127.0.0.1 for the kiosk's own browser" >&2; exit 2 ;;
    http://*) ;;
    *) echo "voice-appliance-screen: VOICE_APPLIANCE_SCREEN_URL must be an http:// address, got $url" >&2; exit 2 ;;
esac
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "voice-appliance-screen: Chromium is not installed: sudo apt-get install chromium (or run install.sh --screen)" >&2
    exit 1
fi

# Chromium does not retry a page that failed to load, so wait (bounded) for the daemon's server;
# once the page is up it reconnects by itself across daemon restarts.
hostport=${url#http://}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}
[ "$port" != "$hostport" ] || port=80
for _ in $(seq 1 120); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then break; fi
    sleep 1
done

# A fresh profile at every start: nothing of a visitor is kept by the browser either.
profile=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/voice-appliance-screen.XXXXXX")
trap 'rm -rf -- "$profile"' EXIT
"$browser" --kiosk --noerrdialogs --disable-infobars --no-first-run --no-default-browser-check \
    --disable-session-crashed-bubble --disable-translate --disable-features=Translate,TranslateUI \
    --check-for-update-interval=31536000 --password-store=basic --disable-pinch --overscroll-history-navigation=0 \
    --ozone-platform-hint=auto --user-data-dir="$profile" "$url"
