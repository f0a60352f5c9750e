"""Tool calling through the openai client: a pydantic tool (nested, so its schema refers into
itself) parsed back by the client, the client's stream helper, one turn of an agent loop (a
call, its result sent back, an answer in words), and bad tool requests."""

import json
import warnings

import openai
from pydantic import BaseModel, Field

from common import Timer, check, check_eq, client, dump, parse_args


class Place(BaseModel):
    city: str = Field(max_length=30)
    country: str = Field(max_length=30)


class GetWeather(BaseModel):
    """The current weather at a place."""

    place: Place
    unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})


CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


def main():
    warnings.filterwarnings("ignore", message="Pydantic serializer warnings")
    args = parse_args()
    c = client(args)
    model = args.model
    ask = [{"role": "user", "content": "What is the weather like in Rome, Italy?"}]
    weather = openai.pydantic_function_tool(GetWeather)
    check("$defs" in json.dumps(weather), f"the pydantic tool has no $defs: {weather}")

    with Timer("parse() of a pydantic tool's call"):
        parse = getattr(c.chat.completions, "parse", None) or c.beta.chat.completions.parse
        r = parse(
            model=model, messages=ask, tools=[weather, CLOCK], tool_choice="required", temperature=0, max_tokens=80
        )
    choice = r.choices[0]
    check_eq(choice.finish_reason, "tool_calls", f"finish_reason of {dump(r)}")
    check_eq(len(choice.message.tool_calls), 1, f"calls in {dump(r)}")
    call = choice.message.tool_calls[0]
    check_eq(call.function.name, "GetWeather", f"the call in {dump(r)}")
    parsed = call.function.parsed_arguments
    check(isinstance(parsed, GetWeather), f"parsed arguments: {dump(r)}")
    check(parsed.unit in ("celsius", "fahrenheit"), f"unit: {parsed!r}")
    check("Rome" in parsed.place.city, f"city: {parsed!r}")
    print(f"  parsed: {parsed!r}")

    with Timer("the client's stream helper"):
        with c.chat.completions.stream(
            model=model, messages=ask, tools=[weather, CLOCK], tool_choice="required", temperature=0, max_tokens=80
        ) as stream:
            done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
            final = stream.get_final_completion()
    check_eq(len(done), 1, "arguments.done events")
    check_eq(done[0].name, "GetWeather", "streamed call")
    check_eq(done[0].parsed_arguments, parsed, "streamed arguments")
    check_eq(final.choices[0].message.tool_calls[0].function.arguments, call.function.arguments, "final")

    with Timer("an agent turn: call, result, answer"):
        messages = [{"role": "user", "content": "What time is it in Tokyo?"}]
        r = c.chat.completions.create(
            model=model,
            messages=messages,
            tools=[CLOCK],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            temperature=0,
            max_tokens=60,
        )
        call = r.choices[0].message.tool_calls[0]
        zone = json.loads(call.function.arguments)["zone"]
        check(isinstance(zone, str) and zone, f"zone: {dump(r)}")
        messages.append(r.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "It is 14:30 in Tokyo."})
        r = c.chat.completions.create(model=model, messages=messages, tools=[CLOCK], temperature=0, max_tokens=60)
    answer = r.choices[0].message
    check_eq(r.choices[0].finish_reason, "stop", f"finish_reason of {dump(r)}")
    check(not answer.tool_calls and answer.content, f"an answer in words: {dump(r)}")
    check("14:30" in answer.content, f"the answer leaves out the result: {answer.content!r}")
    print(f"  called get_time({zone!r}); answered {answer.content!r}")

    for what, kwargs, param in [
        ("a tool that is not there", {"tools": [CLOCK], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice.function.name"),
        ("a tool without a function", {"tools": [{"type": "function"}]}, "tools[0].function"),
        ("an answer to no call", {"messages": ask + [{"role": "tool", "tool_call_id": "nope", "content": "1"}]}, "messages[1].tool_call_id"),
    ]:
        try:
            c.chat.completions.create(**{"model": model, "messages": ask, "max_tokens": 4, **kwargs})
            raise AssertionError(f"{what} was accepted")
        except openai.BadRequestError as e:
            check_eq(e.body.get("param"), param, f"param of {what}")
    print("  bad tool requests: 400 with their param")


if __name__ == "__main__":
    main()
