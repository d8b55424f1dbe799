// Screenshot of the MLflow runs table with the evaluate runs grouped by method (one row per method, its runs below,
// the group's average of the headline metrics), taken with headless Chromium through playwright-core.
//
//   npm install --prefix /tmp/pw playwright-core
//   mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$PWD/mlflow.db &
//   NODE_PATH=/tmp/pw/node_modules node tools/mlflow_screenshot.js http://127.0.0.1:5000 <experiment id> out.png
//
// Grouping is a click in the UI (its state is kept in the browser, not in the URL), so the script clicks it.
// CHROMIUM (default /usr/bin/chromium) names the browser binary.
const { chromium } = require('playwright-core');

const METRICS = ['eval/headline/fpr95', 'eval/mean/fpr95', 'eval/mean/auroc', 'eval/id_acc'];

async function menuItem(page, text) {
  // the open menu is rendered last in the page, after the table headers of the same name
  await page.getByText(text, { exact: true }).last().click();
  await page.waitForTimeout(400);
}

(async () => {
  const [base, expId, out] = process.argv.slice(2);
  if (!out) throw new Error('usage: node tools/mlflow_screenshot.js <mlflow ui url> <experiment id> <out.png>');
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
                                          args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`${base}/#/experiments/${expId}/runs`, { waitUntil: 'networkidle', timeout: 120000 });
  await page.getByText('Group by').first().waitFor({ timeout: 180000 });
  await page.waitForTimeout(2000);
  const close = page.locator('[aria-label="Close"]');  // the assistant side panel
  if (await close.count()) await close.first().click();
  await page.locator('[aria-label="Toggle sidebar"]').first().click();  // more room for the table
  const search = page.getByPlaceholder(/metrics\.rmse/);
  await search.fill("tags.stage = 'evaluate' and tags.group = 'main'");  // ablation points aside
  await search.press('Enter');
  await page.waitForTimeout(3000);
  await page.getByText('Group by').first().click();
  await page.waitForTimeout(1000);
  await menuItem(page, 'method');
  await page.keyboard.press('Escape');
  await page.waitForTimeout(1500);
  await page.getByText('Columns').first().click();
  await page.waitForTimeout(1000);
  for (const attr of ['Dataset', 'Source', 'Models']) await menuItem(page, attr);  // hide the empty columns
  for (const m of METRICS) {
    await page.getByPlaceholder('Search columns').fill(m);
    await page.waitForTimeout(600);
    await menuItem(page, m);
  }
  await page.keyboard.press('Escape');
  await page.waitForTimeout(3000);
  await page.screenshot({ path: out });
  await browser.close();
})();
