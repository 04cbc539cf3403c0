"use strict";
// The playground: streams a chat through the gateway's own /v1/chat/completions with the
// session's playground key, then shows what the ledger recorded (/v1/generation?id=).
// Every prompt and answer is written with textContent: nothing typed can become markup.
(function () {
  const csrf = document.body.dataset.csrf;
  const form = document.getElementById("chat-form");
  const model = document.getElementById("model");
  const system = document.getElementById("system");
  const message = document.getElementById("message");
  const send = document.getElementById("send");
  const stop = document.getElementById("stop");
  const clear = document.getElementById("clear");
  const transcript = document.getElementById("transcript");
  let key = null;
  let history = [];
  let controller = null;

  function element(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function addTurn(role, text) {
    const turn = element("article", "turn " + role);
    turn.appendChild(element("div", "role", role));
    const body = element("div", "text", text);
    turn.appendChild(body);
    transcript.appendChild(turn);
    return { turn: turn, body: body };
  }

  function setMeta(list, name, cls, value) {
    let dd = list.querySelector("dd." + cls);
    if (!dd) {
      list.appendChild(element("dt", null, name));
      dd = element("dd", cls);
      list.appendChild(dd);
    }
    dd.textContent = value;
  }

  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
  }

  async function playgroundKey() {
    if (key) return key;
    const response = await fetch("/ui/api/playground-key", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf },
    });
    if (response.status === 401) {
      window.location.href = "/ui/login?next=%2Fui%2Fplayground";
      throw new Error("the session has ended; log in again");
    }
    if (!response.ok) throw new Error("no playground key (HTTP " + response.status + ")");
    key = (await response.json()).key;
    return key;
  }

  async function generation(secret, id) {
    for (let i = 0; i < 40; i++) {
      const response = await fetch("/v1/generation?id=" + encodeURIComponent(id), {
        headers: { Authorization: "Bearer " + secret },
      });
      if (response.ok) return response.json();
      if (response.status !== 404) return null;
      await new Promise(function (resolve) { window.setTimeout(resolve, 150); });
    }
    return null;
  }

  async function readStream(response, answer) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let content = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return content;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue; // keep-alive comments
          const data = line.slice(6);
          if (data === "[DONE]") return content;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) {
              content += choice.delta.content;
              answer.body.textContent = content;
            }
          }
        }
      }
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = message.value.trim();
    if (!text) return;
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    messages.push(...history, { role: "user", content: text });
    addTurn("user", text);
    message.value = "";
    const answer = addTurn("assistant", "");
    answer.turn.classList.add("streaming");
    const meta = element("dl", "meta");
    answer.turn.appendChild(meta);
    busy(true);
    controller = new AbortController();
    try {
      const secret = await playgroundKey();
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { Authorization: "Bearer " + secret, "Content-Type": "application/json" },
        body: JSON.stringify({
          model: model.value,
          messages: messages,
          stream: true,
          stream_options: { include_usage: true },
        }),
        signal: controller.signal,
      });
      const id = response.headers.get("X-Request-Id");
      setMeta(meta, "model", "resolved-model", response.headers.get("X-Resolved-Model") || "-");
      setMeta(meta, "basket", "basket", response.headers.get("X-Route-Basket") || "-");
      if (!response.ok) {
        if (response.status === 401) key = null;
        const body = await response.json().catch(function () { return null; });
        throw new Error((body && body.error && body.error.message) || "HTTP " + response.status);
      }
      const content = await readStream(response, answer);
      history.push({ role: "user", content: text }, { role: "assistant", content: content });
      const row = id ? await generation(secret, id) : null;
      if (row) {
        setMeta(meta, "tokens", "tokens", row.prompt_tokens + " in / " + row.completion_tokens + " out");
        setMeta(meta, "cost", "cost", "$" + row.cost.toFixed(6));
        setMeta(meta, "first token", "ttft", row.ttft_ms === null ? "-" : Math.round(row.ttft_ms) + " ms");
        setMeta(meta, "total", "latency", Math.round(row.latency_ms) + " ms");
      }
      setMeta(meta, "request", "request-id", id || "-");
    } catch (err) {
      answer.turn.classList.add("error");
      const note = err.name === "AbortError" ? "(stopped)" : "Error: " + err.message;
      answer.body.textContent = (answer.body.textContent ? answer.body.textContent + "\n" : "") + note;
    } finally {
      answer.turn.classList.remove("streaming");
      answer.turn.classList.add("done");
      controller = null;
      busy(false);
    }
  });

  stop.addEventListener("click", function () {
    if (controller) controller.abort();
  });

  clear.addEventListener("click", function () {
    history = [];
    transcript.textContent = "";
  });
})();
