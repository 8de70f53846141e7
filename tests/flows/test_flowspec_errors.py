"""Each kind of flow problem is reported with its exact file:line:column, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.flows.format import FlowIssue, FlowValidationError, load_flow, load_flows

MINIMAL = """\
bot:
  name: t
persona: Be helpful.
nodes:
  main:
    instructions: Help.
"""


def write(folder: Path, text: str, name: str = "x.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(FlowValidationError) as info:
        load_flow(path)
    return [str(issue) for issue in info.value.issues]


def test_minimal_flow_is_valid_and_filled_with_defaults(tmp_path: Path) -> None:
    spec = load_flow(write(tmp_path, MINIMAL))
    assert spec.name == "t"
    assert spec.initial_node == "main"
    assert spec.voice == "default_female" and spec.style == "neutral"
    assert spec.turn_taking.vad_stop_secs == 0.2 and spec.greeting.bot_speaks_first
    assert spec.timeouts.then == "end" and spec.recording.retention_days == 30


def test_yaml_syntax_error_has_parser_position(tmp_path: Path) -> None:
    path = write(tmp_path, "bot:\n  name: t\npersona: 'unterminated\nnodes: {}\n")
    (issue,) = problems(path)
    assert issue == (
        f"{path}:5:1: YAML syntax error: while scanning a quoted scalar: found unexpected end of "
        "stream (it started at line 3, column 10)"
    )


def test_syntax_error_in_flow_sequence(tmp_path: Path) -> None:
    path = write(tmp_path, "bot: {name: t}\ntools_allowed: [a, b\npersona: x\n")
    (issue,) = problems(path)
    assert issue.startswith(f"{path}:3:")
    assert "YAML syntax error" in issue and "flow sequence" in issue


def test_empty_file_and_non_mapping(tmp_path: Path) -> None:
    empty = write(tmp_path, "# nothing\n", "empty.yaml")
    assert problems(empty) == [
        f"{empty}:1:1: the file is empty; expected a mapping with bot, persona and nodes"
    ]
    lst = write(tmp_path, "- a\n- b\n", "list.yaml")
    assert problems(lst) == [f"{lst}:1:1: expected a mapping, got a list"]


def test_unknown_key_with_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "vocie: default_male\n")
    assert problems(path) == [
        f"{path}:7:1: unknown key 'vocie' at top level (did you mean 'voice'?)"
    ]


def test_unknown_key_without_close_match_lists_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "recording:\n  enabled: true\n  zzz: 1\n")
    assert problems(path) == [
        f"{path}:9:3: recording: unknown key 'zzz' (allowed: enabled, retention_days)"
    ]


def test_unknown_node_key_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    instructons: x\n")
    assert problems(path) == [
        f"{path}:7:5: nodes.main: unknown key 'instructons' (did you mean 'instructions'?)"
    ]


def test_missing_required_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "bot:\n  description: no name\nnodes:\n  main:\n    style: calm\n")
    assert problems(path) == [
        f"{path}:1:1: missing required key 'persona'",
        f"{path}:2:3: bot: missing required key 'name'",
        f"{path}:5:5: nodes.main: missing required key 'instructions'",
    ]


def test_wrong_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "turn_taking:\n  smart_turn: maybe\n  min_interrupt_words: 1.5\n"
        + "tools_allowed: end_call\npersona_extra: 1\n".replace("persona_extra: 1\n", "")
        + "greeting: [bot]\n",
    )
    assert problems(path) == [
        f"{path}:8:15: turn_taking.smart_turn: expected true or false, got a string 'maybe'",
        f"{path}:9:24: turn_taking.min_interrupt_words: expected an integer, got a number '1.5'",
        f"{path}:10:16: tools_allowed: expected a list, got a string 'end_call'",
        f"{path}:11:11: greeting: expected a mapping, got a list",
    ]


def test_unquoted_phone_number_asks_for_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "phone_numbers:\n  - +15551234567\n")
    assert problems(path) == [
        f"{path}:8:5: phone_numbers[0]: expected a string, got an integer '+15551234567'; "
        "put it in quotes: '+15551234567'"
    ]


def test_out_of_range_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "turn_taking:\n  vad_stop_secs: 0.01\n  min_interrupt_words: -1\n"
        + "recording: {retention_days: 0}\n",
    )
    assert problems(path) == [
        f"{path}:8:18: turn_taking.vad_stop_secs: must be between 0.05 and 2, got 0.01",
        f"{path}:9:24: turn_taking.min_interrupt_words: must be at least 0, got -1",
        f"{path}:10:29: recording.retention_days: must be between 1 and 3650, got 0",
    ]


def test_enum_values_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    style: cheerfull\nstyle: happy\n")
    assert problems(path) == [
        f"{path}:7:12: nodes.main.style: 'cheerfull' is not one of calm, cheerful, empathetic, "
        "serious, whisper, slow, fast, neutral (did you mean 'cheerful'?)",
        f"{path}:8:8: style: 'happy' is not one of calm, cheerful, empathetic, serious, whisper, "
        "slow, fast, neutral",
    ]


def test_unknown_nodes_in_transitions_and_initial_node(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bot: {name: t}
        persona: p
        initial_node: start
        nodes:
          greet:
            instructions: Greet.
            transitions:
              - to: checkout
                when: The caller is done.
              - to: ordr
                when: The caller orders.
          order:
            instructions: Take the order.
        """,
    )
    assert problems(path) == [
        f"{path}:3:15: initial_node: unknown node 'start' (known: greet, order)",
        f"{path}:8:13: nodes.greet.transitions[0].to: unknown node 'checkout' (known: greet, order)",
        f"{path}:10:13: nodes.greet.transitions[1].to: unknown node 'ordr' (known: greet, order) "
        "(did you mean 'order'?)",
    ]


def test_unknown_tools_in_tools_allowed_and_nodes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bot: {name: t}
        persona: p
        tools:
          - {name: lookup, kind: python, description: Look up., handler: pkg.mod:lookup}
        tools_allowed: [lokup, end_call]
        nodes:
          main:
            instructions: Help.
            tools: [lookup, nothing]
        """,
    )
    assert problems(path) == [
        f"{path}:5:17: tools_allowed[0]: unknown tool 'lokup' (defined: lookup) "
        "(did you mean 'lookup'?)",
        f"{path}:5:24: tools_allowed[1]: unknown tool 'end_call' (defined: lookup); declare it "
        "under tools: with {name: end_call, kind: builtin}",
        f"{path}:9:21: nodes.main.tools[1]: unknown tool 'nothing' (defined: lookup)",
    ]


def test_tool_definitions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bot: {name: t}
        persona: p
        tools:
          - name: hook
            kind: webhook
            description: Call the API.
            url: ftp://example.com/x
          - name: py
            kind: python
            description: Run code.
            handler: nodots
            url: https://example.com
          - name: hang_up
            kind: builtin
          - name: magic
            kind: spell
          - name: hook
            kind: builtin
            builtin: end_call
          - name: args
            kind: python
            description: Bad args.
            handler: a.b
            parameters:
              type: object
              properties:
                n: {type: int}
              required: [n, m]
        nodes:
          main: {instructions: Help.}
        """,
    )
    assert problems(path) == [
        f"{path}:7:10: tools[0].url: expected an http:// or https:// URL, got 'ftp://example.com/x'",
        f"{path}:11:14: tools[1].handler: expected a dotted path like 'mypkg.tools:check_stock', "
        "got 'nodots'",
        f"{path}:12:5: tools[1]: unknown key 'url' for a python tool (allowed: name, kind, "
        "description, parameters, handler)",
        f"{path}:13:11: tools[2].name: unknown builtin tool 'hang_up' (known: end_call, "
        "transfer_call, collect_dtmf, knowledge_search, switch_voice); name it after a builtin "
        "or set 'builtin:'",
        f"{path}:16:11: tools[3].kind: 'spell' is not one of webhook, python, builtin",
        f"{path}:17:11: tools[4].name: duplicate tool name 'hook'",
        f"{path}:27:19: tools[5].parameters.properties.n.type: must be one of string, integer, "
        "number, boolean, array, object, null, got 'int'",
        f"{path}:28:21: tools[5].parameters.required[1]: required argument 'm' is not in "
        "properties (known: n)",
    ]


def test_webhook_needs_url_and_description(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "tools:\n  - {name: w, kind: webhook}\n")
    assert problems(path) == [
        f"{path}:8:5: tools[0]: missing required key 'description'",
        f"{path}:8:5: tools[0]: missing required key 'url'",
    ]


def test_verbatim_greeting_needs_the_bot_first_and_no_instruction(tmp_path: Path) -> None:
    both = write(tmp_path, MINIMAL + "greeting:\n  text: Greet.\n  say: Hello.\n")
    assert problems(both) == [
        f"{both}:9:8: greeting.say: greeting has both say (the words) and text "
        "(an instruction): keep one"
    ]
    caller = write(tmp_path, MINIMAL + "greeting:\n  who_speaks_first: caller\n  say: Hi.\n")
    assert problems(caller) == [
        f"{caller}:9:8: greeting.say: greeting.say needs who_speaks_first: bot "
        "(the bot says it when the call opens)"
    ]
    empty = write(tmp_path, MINIMAL + "greeting:\n  say: ''\n")
    assert len(problems(empty)) == 1 and "greeting.say" in problems(empty)[0]


def test_unknown_voice_and_missing_voice_file(tmp_path: Path) -> None:
    (tmp_path / "voices").mkdir()
    (tmp_path / "voices" / "alice.wav").write_bytes(b"RIFF")
    path = write(tmp_path, MINIMAL + "voice: alise\n")
    assert problems(path) == [
        f"{path}:7:8: voice: unknown voice 'alise' (known: alice, default_female, default_male) "
        "(did you mean 'alice'?)"
    ]
    missing = write(tmp_path, MINIMAL + "voice: prompts/me.wav\n", "y.yaml")
    (issue,) = problems(missing)
    assert issue.startswith(f"{missing}:7:8: voice: voice file 'prompts/me.wav' not found")


def test_voice_from_library_and_relative_path(tmp_path: Path) -> None:
    (tmp_path / "voices").mkdir()
    (tmp_path / "voices" / "alice.wav").write_bytes(b"RIFF")
    spec = load_flow(write(tmp_path, MINIMAL + "voice: alice\n"))
    assert (
        spec.voice == "alice" and spec.voice_path == (tmp_path / "voices" / "alice.wav").resolve()
    )
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "me.wav").write_bytes(b"RIFF")
    spec = load_flow(write(tmp_path, MINIMAL + "voice: prompts/me.wav\n", "y.yaml"))
    assert spec.voice == str((tmp_path / "prompts" / "me.wav").resolve())


def test_invalid_e164_and_duplicates_in_one_flow(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL + 'phone_numbers: ["+15551234567", "555-1234", "+15551234567"]\n'
    )
    assert problems(path) == [
        f"{path}:7:33: phone_numbers[1]: expected an E.164 phone number like '+15551234567' "
        "(quoted), got '555-1234'",
        f"{path}:7:45: phone_numbers[2]: duplicate phone number +15551234567 (first listed on "
        "line 7)",
    ]


def test_duplicate_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "persona: again\n")
    assert problems(path) == [f"{path}:7:1: duplicate key 'persona' (first defined on line 3)"]


def test_node_combinations_and_timeouts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bot: {name: t}
        persona: p
        timeouts: {then: transfer}
        nodes:
          a:
            instructions: A.
            end: true
            transfer: "+15551234567"
          b:
            instructions: B.
            end: true
            transitions: [{to: a, when: again}]
        """,
    )
    assert problems(path) == [
        f"{path}:3:18: timeouts.then: then: transfer needs transfer_to (an E.164 number)",
        f"{path}:8:15: nodes.a.transfer: a node cannot both end the call and transfer it",
        f"{path}:11:10: nodes.b.end: a node with 'end' cannot have transitions",
    ]


def test_invalid_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bot: {name: Front Desk}\npersona: p\nlanguage: en_us\nnodes:\n  Main:\n    instructions: x\n"
        "variables:\n  caller-name: string\n",
    )
    assert problems(path) == [
        f"{path}:1:13: bot.name: expected a slug like 'front-desk' (lowercase, digits, - and _), "
        "got 'Front Desk'",
        f"{path}:3:11: language: expected a BCP-47 tag like 'en-US', got 'en_us'",
        f"{path}:5:3: nodes.Main: invalid name 'Main': expected a node name like 'take_order' "
        "(lowercase, digits, _)",
        f"{path}:8:3: variables.caller-name: invalid name 'caller-name': expected an identifier "
        "like 'caller_name'",
    ]


def test_all_issues_reported_at_once_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bot: {name: t, colour: red}
        persona: p
        style: loud
        turn_taking: {vad_stop_secs: 5}
        tools_allowed: [ghost]
        nodes:
          main:
            instructions: x
            transitions: [{to: nowhere, when: never}]
        phone_numbers: ["911"]
        """,
    )
    with pytest.raises(FlowValidationError) as info:
        load_flow(path)
    issues = info.value.issues
    assert [(i.line, i.path) for i in issues] == [
        (1, "bot"),
        (3, "style"),
        (4, "turn_taking.vad_stop_secs"),
        (5, "tools_allowed[0]"),
        (9, "nodes.main.transitions[0].to"),
        (10, "phone_numbers[0]"),
    ]
    assert all(isinstance(i, FlowIssue) and i.file == str(path) for i in issues)
    assert str(info.value).startswith("6 problems in flow definition:\n")


def test_warnings_for_unreachable_nodes_and_unused_tools(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bot: {name: t}
        persona: p
        tools:
          - {name: end_call, kind: builtin}
        nodes:
          main: {instructions: x}
          lonely: {instructions: y}
        """,
    )
    spec = load_flow(path)
    assert [str(w) for w in spec.warnings] == [
        f"{path}:4:5: tools[0]: tool 'end_call' is defined but not allowed in any node",
        f"{path}:7:3: nodes.lonely: node 'lonely' is unreachable from initial node 'main'",
    ]


def test_duplicate_phone_numbers_and_bot_names_across_flows(tmp_path: Path) -> None:
    write(
        tmp_path,
        MINIMAL.replace("name: t", "name: a") + 'phone_numbers: ["+15550001111"]\n',
        "a.yaml",
    )
    b = write(
        tmp_path,
        MINIMAL.replace("name: t", "name: a")
        + 'phone_numbers:\n  - "+15550002222"\n  - "+15550001111"\n',
        "b.yaml",
    )
    with pytest.raises(FlowValidationError) as info:
        load_flows(tmp_path)
    assert [str(i) for i in info.value.issues] == [
        f"{b}:2:9: bot.name: bot name 'a' is also used by {tmp_path / 'a.yaml'}:2:9",
        f"{b}:9:5: phone_numbers[1]: phone number +15550001111 is already routed to bot 'a' "
        f"({tmp_path / 'a.yaml'}:7:17)",
    ]


def test_load_flows_collects_problems_of_every_file(tmp_path: Path) -> None:
    one = write(tmp_path, MINIMAL + "style: loud\n", "one.yaml")
    two = write(tmp_path, "bot: [\n", "two.yml")
    (tmp_path / "notes.txt").write_text("not a flow")
    with pytest.raises(FlowValidationError) as info:
        load_flows(tmp_path)
    assert [i.file for i in info.value.issues] == [str(one), str(two)]


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bot: {name: t}
        persona: p
        x-defaults: &node
          style: calm
        nodes:
          a:
            <<: *node
            instructions: A.
          b:
            <<: *node
            instructions: B.
            colour: red
        """,
    )
    assert problems(path) == [
        f"{path}:3:1: unknown key 'x-defaults' at top level (allowed: bot, persona, voice, style, "
        "language, greeting, turn_taking, timeouts, tools, tools_allowed, nodes, initial_node, "
        "variables, phone_numbers, recording)",
        f"{path}:12:5: nodes.b: unknown key 'colour' (allowed: instructions, style, tools, "
        "transitions, context_strategy, end, transfer)",
    ]
    ok = write(
        tmp_path,
        """\
        bot: {name: t}
        persona: p
        nodes:
          a: &node
            instructions: A.
            style: calm
          b:
            <<: *node
            instructions: B.
        """,
        "ok.yaml",
    )
    spec = load_flow(ok)
    assert spec.nodes["b"].style == "calm" and spec.nodes["b"].instructions == "B."
