"""The client half of the main job: a few chat requests to `origami serve` with the official
`openai` client (one streamed), printed as they come.

    chat_demo.py URL MODEL
"""

import sys

import openai


def main():
    url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    print("models:", ", ".join(m.id for m in client.models.list().data))
    questions = ["What is a computer?", "Why do cats sleep so much?"]
    for q in questions:
        r = client.chat.completions.create(model=model, max_tokens=80, temperature=0.8, seed=1,
                                           messages=[{"role": "user", "content": q}])
        print("\nQ: %s\nA:%s\n   (%d prompt + %d generated tokens, finish: %s)" % (
            q, r.choices[0].message.content.rstrip(), r.usage.prompt_tokens,
            r.usage.completion_tokens, r.choices[0].finish_reason))
    q = "Tell me a fortune."
    print("\nQ: %s (streamed)\nA:" % q, end="", flush=True)
    stream = client.chat.completions.create(model=model, max_tokens=80, temperature=0.8, seed=2,
                                            messages=[{"role": "user", "content": q}],
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            print("\n   (%d prompt + %d generated tokens)" % (chunk.usage.prompt_tokens,
                                                           chunk.usage.completion_tokens))


if __name__ == "__main__":
    main()
