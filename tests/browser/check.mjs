// Headless Chromium checks of `batchguard serve`, driven by tests/serve.rs
// (which starts the server and passes BG_URL, BG_RUN, BG_JOB, BG_ARTIFACTS).
// Each page loads with no console error and no page error, its charts are
// drawn, nothing from job output runs, the copy button copies the re-run
// command, local times are filled in; a screenshot of each page is saved.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const base = process.env.BG_URL;
const runId = process.env.BG_RUN;
const job = process.env.BG_JOB;
const out = process.env.BG_ARTIFACTS;
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "bg-chromium-"));
const failures = [];
const fail = (msg) => { failures.push(msg); console.log("FAIL " + msg); };

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1400, height: 900 },
  permissions: ["clipboard-read", "clipboard-write"],
});

const pages = [
  { name: "jobs", url: "/", svg: "svg.strip rect", min: 3 },
  { name: "job", url: `/jobs/${job}?range=10m`, svg: "svg.chart circle", min: 2 },
  { name: "run", url: `/runs/${runId}`, svg: null, min: 0 },
  { name: "timeline", url: "/timeline?range=10m", svg: "svg.gantt rect", min: 3 },
];

try {
  for (const p of pages) {
    const page = await context.newPage();
    const errors = [];
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("requestfailed", (r) => errors.push("request failed: " + r.url()));
    const resp = await page.goto(base + p.url, { waitUntil: "load" });
    if (!resp || resp.status() !== 200) fail(`${p.name}: status ${resp && resp.status()}`);
    if (p.svg) {
      const n = await page.locator(p.svg).count();
      if (n < p.min) fail(`${p.name}: ${n} of ${p.svg}, want at least ${p.min}`);
      console.log(`${p.name}: ${n} × ${p.svg}`);
    }
    const pwned = await page.evaluate(() => window.__pwned);
    if (pwned !== undefined) fail(`${p.name}: job output ran as script`);
    const scripts = await page.evaluate(() => document.scripts.length);
    if (scripts !== 1) fail(`${p.name}: ${scripts} scripts, want only app.js`);
    const local = await page.locator("time[data-local]").allTextContents();
    if (local.length && !local.every((t) => t.includes("your time"))) {
      fail(`${p.name}: local times not rendered: ${local.slice(0, 3)}`);
    }
    if (p.name === "run") {
      const expected = (await page.locator("#rerun").textContent()).trim();
      const button = page.locator("button[data-copy-from=rerun]");
      await button.click();
      await page.waitForFunction(() => document.querySelector("button[data-copy-from=rerun]").hasAttribute("data-copied"));
      const copied = await button.getAttribute("data-copied");
      let clip = null;
      try { clip = await page.evaluate(() => navigator.clipboard.readText()); } catch (e) { clip = null; }
      console.log(`run: copy button copied ${JSON.stringify(copied)}, clipboard ${JSON.stringify(clip)}`);
      if (copied !== expected) fail(`run: copied ${copied} != ${expected}`);
      if (clip !== null && clip !== expected) fail(`run: clipboard ${clip} != ${expected}`);
      if (!expected.startsWith("batchguard ")) fail(`run: re-run command ${expected}`);
      const log = await page.locator("#log").textContent();
      if (!log.includes("<script>window.__pwned=1</script>")) fail("run: hostile output not shown as text");
    }
    await page.screenshot({ path: path.join(out, `${p.name}.png`), fullPage: true });
    if (errors.length) fail(`${p.name}: console errors: ${errors.join(" | ")}`);
    await page.close();
  }
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(failures.length ? `${failures.length} failed` : "all browser checks passed");
process.exit(failures.length ? 1 : 0);
