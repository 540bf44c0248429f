"""A small Flask app: submit a task from a form and watch its live progress bar.

    pip install flask
    export TASKCAST_ALLOWED_ORIGINS=http://127.0.0.1:5000
    taskcast demo --no-browser        # or your own Redis, worker and bridge
    flask --app examples/webapp.py run --port 5000    # open http://127.0.0.1:5000/

The page loads the JS client from the bridge (TASKCAST_PUBLIC_URL, default
http://127.0.0.1:8765) and subscribes to each task it submits; several bars
update side by side. The app itself only submits tasks: progress never goes
through it. The page is on another origin than the bridge, which serves other
origins only when TASKCAST_ALLOWED_ORIGINS lists them (add
http://localhost:5000 to open it under that name).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request

from taskcast.terminal import submitting_app

celery_app = submitting_app("taskcast_webapp")

# Empty counts as unset, as for every TASKCAST_ variable.
BRIDGE = (os.environ.get("TASKCAST_PUBLIC_URL") or "http://127.0.0.1:8765").rstrip("/")
TASKS = {
    "demo.generate_code": {"lines": 150, "delay": 0.03},
    "demo.web_search": {"queries": 4, "delay": 0.4},
    "demo.orchestrate": {"steps": 5, "delay": 0.6},
    "demo.flaky": {"fail_at": 0.6, "delay": 0.3},
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>taskcast web app example</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 15px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
 .job { margin: .8rem 0; } .job small { color: #666; }
 progress { width: 100%; height: 1.1rem; }
 .failed, .revoked, .lost { color: #b00; } .completed { color: #070; }
</style></head>
<body>
<h1>Submit a task</h1>
<form id="submit"><select name="task">OPTIONS</select> <button>Start</button></form>
<div id="jobs"></div>
<script type="module">
import { TaskcastClient } from "BRIDGE/taskcast.js";
const client = new TaskcastClient("BRIDGE".replace(/^http/, "ws") + "/ws");
const bars = new Map();
function show(event) {
  const job = bars.get(event.operation_id);
  if (!job) return;
  const d = event.data;
  if (d.progress != null) job.bar.value = d.progress;
  if (d.message) job.text.textContent = d.message;
  if (event.event_type === "completed") { job.bar.value = 1; job.state.textContent = "completed"; }
  if (event.event_type === "error") job.state.textContent = d.status + ": " + d.error;
  if (event.event_type === "status") job.state.textContent = d.status;
  job.state.className = job.state.textContent.split(":")[0];
}
client.on("*", show);
await client.connect();
document.getElementById("submit").addEventListener("submit", async (e) => {
  e.preventDefault();
  const reply = await fetch("submit", { method: "POST", body: new FormData(e.target) });
  const { operation_id, task } = await reply.json();
  const el = document.createElement("div");
  el.className = "job";
  el.innerHTML = "<b></b> <span></span><progress max=1 value=0></progress><small></small>";
  el.querySelector("b").textContent = task;
  document.getElementById("jobs").prepend(el);
  bars.set(operation_id, { bar: el.querySelector("progress"), text: el.querySelector("small"),
                           state: el.querySelector("span") });
  await client.subscribe(operation_id);
});
</script></body></html>
"""

app = Flask(__name__)


@app.get("/")
def index() -> str:
    options = "".join(f"<option>{name}</option>" for name in TASKS)
    return PAGE.replace("OPTIONS", options).replace("BRIDGE", BRIDGE)


@app.post("/submit")
def submit():  # noqa: ANN201 - a Flask response
    name = request.form.get("task", "")
    if name not in TASKS:
        return jsonify(error=f"unknown task {name!r}; choose one of {sorted(TASKS)}"), 400
    result = celery_app.send_task(name, kwargs=TASKS[name])
    return jsonify(operation_id=result.id, task=name)
