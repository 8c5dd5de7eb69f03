"""Entry point placeholder; replaced by the playground UI."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

if __name__ == "__main__":
    with gr.Blocks(title="GPT-2 Playground") as demo:
        gr.Markdown("# GPT-2 Playground")
    demo.launch(server_name="127.0.0.1", server_port=7860)
