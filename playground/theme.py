"""Look of the app: one Gradio theme and a little CSS (passed to launch(), as Gradio 6 expects)."""

from __future__ import annotations

import gradio as gr

THEME = gr.themes.Soft(
    primary_hue="blue",
    secondary_hue="slate",
    neutral_hue="slate",
    font=["Inter", "system-ui", "sans-serif"],  # local fonts only: the app must work offline
    font_mono=["JetBrains Mono", "ui-monospace", "Menlo", "monospace"],
).set(block_title_text_weight="600", button_large_radius="8px")

CSS = """
.gradio-container { max-width: 1280px !important; margin: auto; }
#app-header h1 { margin-bottom: 0; }
#app-header p { margin-top: 4px; color: var(--body-text-color-subdued); }
.field-error input, .field-error textarea, .field-error select { border-color: #dc2626 !important; }
.field-error [data-testid="block-info"], .field-error .info, .field-error span[data-testid="block-info"] {
  color: #dc2626 !important;
}
.form-message p { margin: 0; }
button.danger { color: #b91c1c !important; border-color: #fecaca !important; }
button.danger:hover { background: #fef2f2 !important; }
.section-title p { margin: 8px 0 0 0; }
.form-message.error { color: #b91c1c; }
.status-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 16px;
  background: var(--background-fill-secondary); }
.status-card .row1 { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; font-size: 13.5px; }
.status-card .run { font-weight: 600; font-size: 15px; }
.status-card .stat b { font-variant-numeric: tabular-nums; }
.status-card .stat span { color: var(--body-text-color-subdued); margin-right: 4px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 12px; font-weight: 600;
  text-transform: uppercase; letter-spacing: .04em; }
.badge.running { background: #dbeafe; color: #1d4ed8; }
.badge.stopping { background: #fef3c7; color: #92400e; }
.badge.done { background: #dcfce7; color: #166534; }
.badge.stopped { background: #e5e7eb; color: #374151; }
.badge.failed { background: #fee2e2; color: #991b1b; }
.badge.unknown, .badge.starting { background: #f3f4f6; color: #4b5563; }
.progress { height: 8px; border-radius: 999px; background: #e5e7eb; overflow: hidden; margin-top: 10px; }
.progress > div { height: 100%; background: linear-gradient(90deg, #3b82f6, #6366f1); transition: width .6s ease; }
.failure { margin-top: 10px; color: #991b1b; background: #fef2f2; border-radius: 8px; padding: 8px 12px;
  font-family: var(--font-mono); font-size: 12px; white-space: pre-wrap; }
.param-count { font-size: 14px; padding-top: 6px; }
.param-count b { font-size: 18px; }
.hint { color: var(--body-text-color-subdued); font-size: 13px; }
.log-title p { margin: 0 0 4px 0; font-size: 14px; }
.log-box { display: flex; flex-direction: column-reverse; overflow-y: auto; height: 268px;
  border: 1px solid var(--border-color-primary); border-radius: 8px; background: #0f172a; }
.log-box pre { margin: 0; padding: 10px 12px; color: #e2e8f0; font-family: var(--font-mono); font-size: 11.5px;
  line-height: 1.45; white-space: pre-wrap; word-break: break-word; background: transparent; border: none; }
"""
