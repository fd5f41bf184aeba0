"""Drives modhost's OpenAI- and Ollama-compatible APIs with the official
clients from PyPI (`openai`, `ollama`) and one tool built on the OpenAI API
(`langchain-openai`), as their users would, and checks what comes back.

Usage: generation_clients.py BASE_URL
  BASE_URL: the server, e.g. http://127.0.0.1:32168; a LlamaChat module on a
  random-weight demo model must be running there.

Each check prints one line; the first failed check raises, and the script
exits non-zero with the reason. Counts are compared with the module's own,
read from modhost's job API (GET /v1/jobs/{id}).
"""
import sys
import time

import httpx
import ollama
import openai
from langchain_openai import ChatOpenAI


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok  {name}")


def job(base, job_id):
    return httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()["job"]


def main() -> None:
    base = sys.argv[1].rstrip("/")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=60)
    hello = [{"role": "system", "content": "You are brief."},
             {"role": "user", "content": "Name three planets."}]

    # ---- OpenAI: models ---------------------------------------------------
    models = [m.id for m in client.models.list().data]
    check("models.list names the LlamaChat model", len(models) >= 1, models)
    model = models[0]
    check("models.retrieve", client.models.retrieve(model).id == model)

    # ---- chat, max_tokens, usage equal to the module's counts --------------
    reply = client.chat.completions.create(
        model=model, messages=hello, max_tokens=8, temperature=0)
    choice = reply.choices[0]
    check("chat: a reply", isinstance(choice.message.content, str) and choice.message.content)
    check("chat: finish_reason length at max_tokens", choice.finish_reason == "length", choice)
    check("chat: usage.completion_tokens == max_tokens", reply.usage.completion_tokens == 8, reply.usage)
    result = job(base, reply.id.removeprefix("chatcmpl-"))["result"]
    check("chat: usage equals the module's counts",
          (reply.usage.prompt_tokens, reply.usage.completion_tokens)
          == (result["prompt_tokens"], result["completion_tokens"]), (reply.usage, result))
    check("chat: the text is the module's reply", choice.message.content == result["reply"])
    check("chat: cached tokens reported",
          reply.usage.prompt_tokens_details.cached_tokens == result.get("cached_tokens", 0))

    # max_completion_tokens, the newer name.
    reply = client.chat.completions.create(
        model=model, messages=hello, max_completion_tokens=3, temperature=0)
    check("chat: max_completion_tokens", reply.usage.completion_tokens == 3, reply.usage)

    # ---- seed ------------------------------------------------------------
    seeded = [client.chat.completions.create(
        model=model, messages=hello, max_tokens=12, temperature=0.9, seed=seed,
    ).choices[0].message.content for seed in (7, 7, 8)]
    check("chat: the same seed gives the same reply", seeded[0] == seeded[1], seeded)
    check("chat: another seed, another reply", seeded[0] != seeded[2], seeded)

    # ---- stop ------------------------------------------------------------
    greedy = client.chat.completions.create(
        model=model, messages=hello, max_tokens=24, temperature=0).choices[0].message.content
    stop = greedy[6:9]
    cut = greedy.find(stop)
    stopped = client.chat.completions.create(
        model=model, messages=hello, max_tokens=24, temperature=0, stop=[stop, "\u2603never"])
    check("chat: stop ends the reply before the stop string",
          stopped.choices[0].message.content == greedy[:cut], (greedy, stop, stopped.choices[0]))
    check("chat: finish_reason stop at a stop string", stopped.choices[0].finish_reason == "stop")

    # ---- streaming -------------------------------------------------------
    chunks = list(client.chat.completions.create(
        model=model, messages=hello, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    check("stream: the deltas join to the greedy reply", text == greedy, (text, greedy))
    check("stream: several chunks", len(chunks) > 3, len(chunks))
    check("stream: finish_reason length", finishes == ["length"], finishes)
    check("stream: usage chunk", len(usage) == 1 and usage[0].completion_tokens == 24, usage)

    # ---- completions -----------------------------------------------------
    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, temperature=0)
    check("completions: text", isinstance(completion.choices[0].text, str) and completion.choices[0].text)
    check("completions: usage", completion.usage.completion_tokens == 5, completion.usage)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True) if c.choices)
    check("completions: streamed text is the same", streamed == completion.choices[0].text,
          (streamed, completion.choices[0].text))

    # ---- embeddings ------------------------------------------------------
    emb = client.embeddings.create(model=model, input=["hello world", "planets", "hello world"])
    vectors = [d.embedding for d in emb.data]
    check("embeddings: one vector per input", len(vectors) == 3 and len(vectors[0]) > 8, len(vectors))
    check("embeddings: unit length", abs(sum(x * x for x in vectors[1]) - 1.0) < 1e-3)
    check("embeddings: the same text, the same vector",
          max(abs(a - b) for a, b in zip(vectors[0], vectors[2])) < 1e-5)
    check("embeddings: another text, another vector", vectors[0] != vectors[1])
    check("embeddings: usage", emb.usage.prompt_tokens > 3, emb.usage)
    single = client.embeddings.create(model=model, input="planets").data[0].embedding
    check("embeddings: a lone string", max(abs(a - b) for a, b in zip(single, vectors[1])) < 1e-5)

    # ---- errors ----------------------------------------------------------
    try:
        client.chat.completions.create(model=model, messages=hello, n=2)
        check("n=2 is refused", False, "no error")
    except openai.BadRequestError as e:
        check("n=2 is refused with 400 naming n", e.status_code == 400 and "n is 2" in str(e), e)
    try:
        client.chat.completions.create(model="no-such-model", messages=hello)
        check("unknown model is refused", False, "no error")
    except openai.NotFoundError as e:
        check("unknown model: 404 model_not_found", e.code == "model_not_found", e)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "robot", "content": "hi"}])
        check("bad role is refused", False, "no error")
    except openai.BadRequestError as e:
        check("bad role: 400 naming the message index", "messages[0]" in str(e), e)

    # ---- a client that disconnects mid-stream cancels its job -------------
    stream = client.chat.completions.create(
        model=model, messages=hello, max_tokens=900, temperature=0.8, stream=True)
    first = [next(iter(stream)) for _ in range(3)]
    job_id = first[0].id.removeprefix("chatcmpl-")
    stream.close()
    deadline = time.time() + 10
    status = job(base, job_id)["status"]
    while status not in ("cancelled", "completed", "failed") and time.time() < deadline:
        time.sleep(0.05)
        status = job(base, job_id)["status"]
    check("disconnect: the job is cancelled", status == "cancelled", status)
    tokens = job(base, job_id)["result"]["completion_tokens"]
    check("disconnect: it stopped early", tokens < 900, tokens)

    # ---- Ollama ----------------------------------------------------------
    oll = ollama.Client(host=base, timeout=60)
    names = [m.model for m in oll.list().models]
    check("ollama list", model in names, names)
    check("ollama show", "completion" in (oll.show(model).capabilities or []))
    check("ollama ps", model in [m.model for m in oll.ps().models])
    options = {"num_predict": 8, "temperature": 0}
    chat = oll.chat(model=model, messages=hello, options=options, stream=False)
    check("ollama chat", chat.message.content and chat.done and chat.done_reason == "length", chat)
    check("ollama chat: eval_count", chat.eval_count == 8 and chat.prompt_eval_count > 0, chat)
    check("ollama chat: durations in ns", chat.total_duration > 1000, chat.total_duration)
    parts = list(oll.chat(model=model, messages=hello, options=options, stream=True))
    check("ollama chat stream: ends done",
          parts[-1].done and parts[-1].eval_count == 8 and not any(p.done for p in parts[:-1]), parts[-1])
    check("ollama chat stream: same text",
          "".join(p.message.content for p in parts) == chat.message.content)
    gen = oll.generate(model=model, prompt="Name three planets.", options=options, stream=False)
    check("ollama generate", gen.response and gen.done_reason == "length" and gen.eval_count == 8, gen)
    raw = "".join(p.response for p in oll.generate(
        model=model, prompt="Once upon a time", raw=True, options={"num_predict": 5, "temperature": 0},
        stream=True))
    check("ollama generate raw goes through the completion route", raw == completion.choices[0].text,
          (raw, completion.choices[0].text))
    embedded = oll.embed(model=model, input=["planets"])
    check("ollama embed", len(embedded.embeddings) == 1
          and max(abs(a - b) for a, b in zip(embedded.embeddings[0], vectors[1])) < 1e-5)
    version = httpx.get(f"{base}/api/version", timeout=10).json()
    check("ollama version", version["version"], version)
    try:
        oll.pull("llama3")
        check("pull is refused", False, "no error")
    except ollama.ResponseError as e:
        check("pull: 501 naming what is served", e.status_code == 501 and "/api/chat" in str(e), e)

    # ---- a tool on top of the OpenAI API: LangChain ----------------------
    llm = ChatOpenAI(base_url=f"{base}/v1", api_key="unused", model=model, max_tokens=6, temperature=0)
    answer = llm.invoke("Name three planets.")
    check("langchain-openai invoke", isinstance(answer.content, str) and answer.content, answer)
    check("langchain-openai usage", answer.usage_metadata["output_tokens"] == 6, answer.usage_metadata)
    print("all checks passed")


if __name__ == "__main__":
    main()
