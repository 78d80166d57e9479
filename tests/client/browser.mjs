// Opens herald's demo page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) and reports what the page shows, for tests/demo.rs.
//
// Usage: node browser.mjs <page url> <screenshot.png>
// Prints one JSON line per step on stdout:
//   {"step":"connected","status":"..."}       the page says it is connected
//   {"step":"notification","text":"..."}       the first notification the page shows
//   {"step":"screenshot","path":"..."}
// Exits non-zero with {"step":"error","message":"..."} when a step times out.
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const executablePath = process.env.HERALD_TEST_CHROMIUM ?? "/usr/bin/chromium";

// No background networking: this machine's network is closed, and the test must only talk to
// the herald under test.
const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  page.on("console", (msg) => process.stderr.write(`[page ${msg.type()}] ${msg.text()}\n`));
  page.on("pageerror", (err) => process.stderr.write(`[page error] ${err.message}\n`));
  await page.goto(url);
  const status = page.locator('#status[data-state="connected"]');
  await status.waitFor({ timeout: 15000 });
  out({ step: "connected", status: await status.textContent() });
  const first = page.locator("#notifications li.notification").first();
  await first.waitFor({ timeout: 15000 });
  out({ step: "notification", text: await first.textContent() });
  await page.screenshot({ path: screenshot, fullPage: true });
  out({ step: "screenshot", path: screenshot });
} catch (err) {
  failed = true;
  out({ step: "error", message: String(err.message ?? err) });
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
