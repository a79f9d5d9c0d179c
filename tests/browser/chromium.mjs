// Debian's Chromium as these tests launch it: headless, as root (no sandbox), and quiet on the
// closed network (no background connections, which it would otherwise retry and report).
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/// A persistent context in `userDataDir` (a fresh directory), with `extraArgs` and `options`.
export function launch(userDataDir, { extraArgs = [], ...options } = {}) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    ...options,
    args: [...ARGS, ...extraArgs],
  });
}
