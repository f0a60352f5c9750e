"""Structured outputs through the openai client: a JSON schema (plain and streamed), any JSON
object, the client's parse() with a pydantic model, the legacy endpoint, and a schema the
server cannot compile."""

import json
import warnings

import openai

from pydantic import BaseModel, Field

from common import Timer, check, check_eq, client, dump, parse_args

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        # Unbounded integers let a small model write digits until the limit.
        "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
    },
    "required": ["city", "country", "population", "landmarks"],
    "additionalProperties": False,
}


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=130)
    hobbies: list[str] = Field(max_length=3)


def check_city(text, what):
    try:
        v = json.loads(text)
    except ValueError as e:
        raise AssertionError(f"{what}: not JSON ({e}): {text!r}")
    check(isinstance(v, dict), f"{what}: not an object: {text!r}")
    check_eq(sorted(v), sorted(CITY["required"]), f"{what}: keys")
    check(isinstance(v["city"], str) and isinstance(v["country"], str), f"{what}: {text!r}")
    check(isinstance(v["population"], int) and 0 <= v["population"] <= 100000000, f"{what}: {text!r}")
    check(isinstance(v["landmarks"], list) and len(v["landmarks"]) <= 3, f"{what}: {text!r}")
    check(all(isinstance(x, str) for x in v["landmarks"]), f"{what}: {text!r}")
    return v


def main():
    # The client's parse() warns while serializing its own parsed model; nothing here is wrong.
    warnings.filterwarnings("ignore", message="Pydantic serializer warnings")
    args = parse_args()
    c = client(args)
    model = args.model
    ask = [{"role": "user", "content": "Describe the capital of Italy as JSON."}]
    city_format = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY}}

    with Timer("json_schema, greedy"):
        r = c.chat.completions.create(
            model=model, messages=ask, temperature=0, max_tokens=120, response_format=city_format
        )
    content = r.choices[0].message.content
    check_eq(r.choices[0].finish_reason, "stop", f"finish_reason of {dump(r)}")
    check_city(content, "greedy")
    print(f"  json_schema: {content}")

    with Timer("json_schema, streamed"):
        text, finish = "", None
        for chunk in c.chat.completions.create(
            model=model, messages=ask, temperature=0, max_tokens=120, response_format=city_format, stream=True
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    check_eq(text, content, "streamed text")
    check_eq(finish, "stop", "streamed finish_reason")

    with Timer("json_schema, sampled"):
        for seed in (1, 2):
            r = c.chat.completions.create(
                model=model, messages=ask, temperature=1.0, seed=seed, max_tokens=160, response_format=city_format
            )
            check_eq(r.choices[0].finish_reason, "stop", f"finish_reason of {dump(r)}")
            check_city(r.choices[0].message.content, f"seed {seed}")

    with Timer("json_object"):
        r = c.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
            temperature=0.7,
            seed=5,
            max_tokens=120,
            response_format={"type": "json_object"},
        )
    text = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        check(isinstance(json.loads(text), dict), f"json_object: {text!r}")
    else:
        # Cut at the limit: what there is must still be the start of an object.
        check(text.startswith("{"), f"json_object: {text!r}")
    print(f"  json_object: {text} ({r.choices[0].finish_reason})")

    with Timer("parse() with a pydantic model"):
        parse = getattr(c.chat.completions, "parse", None) or c.beta.chat.completions.parse
        r = parse(
            model=model,
            messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}],
            temperature=0,
            max_tokens=120,
            response_format=Person,
        )
    person = r.choices[0].message.parsed
    check(isinstance(person, Person), f"parsed: {dump(r)}")
    check(0 <= person.age <= 130 and len(person.hobbies) <= 3, f"parsed: {person!r}")
    print(f"  parsed: {person!r}")

    with Timer("completions with response_format"):
        r = c.completions.create(
            model=model,
            prompt="The capital of Italy, as JSON:",
            temperature=0,
            max_tokens=120,
            extra_body={"response_format": city_format},
        )
    check_eq(r.choices[0].finish_reason, "stop", f"finish_reason of {dump(r)}")
    check_city(r.choices[0].text, "completion")

    with Timer("llama.cpp's grammar field (GBNF)"):
        gbnf = 'root ::= answer "."\nanswer ::= "yes" | "no"  # llama.cpp\'s format\n'
        r = c.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Is the sky blue?"}],
            temperature=0,
            max_tokens=8,
            extra_body={"grammar": gbnf},
        )
    check(r.choices[0].message.content in ("yes.", "no."), f"grammar: {dump(r)}")
    check_eq(r.choices[0].finish_reason, "stop", "finish_reason under a grammar")
    try:
        c.completions.create(model=model, prompt="x", max_tokens=4, extra_body={"grammar": "root ::= missing"})
        raise AssertionError("a grammar with an undefined rule was accepted")
    except openai.BadRequestError as e:
        check_eq(e.body.get("param"), "grammar", "param of the bad grammar")
        check("missing" in e.body.get("message", ""), f"message names the rule: {e.body}")

    try:
        c.chat.completions.create(
            model=model,
            messages=ask,
            max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}},
        )
        raise AssertionError("a schema with an unknown type was accepted")
    except Exception as e:
        check(isinstance(e, openai.BadRequestError), f"bad schema: {e!r}")
        check_eq(e.body.get("param"), "response_format", "param of the bad schema")
        check("strnig" in e.body.get("message", ""), f"message names the fault: {e.body}")
    print("  a bad schema: 400, response_format")


if __name__ == "__main__":
    main()
