"""Print the config reference table (Markdown) that README.md carries; tests check README matches it."""

from fer_bench.config import describe_schema


def reference_table() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, doc in describe_schema():
        shown = "null" if default is None else str(default).replace("|", "\\|")
        lines.append(f"| `{key}` | {type_name} | `{shown}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_table())
