"""`python -m outreach` is the `outreach` command."""

from outreach.cli import main

if __name__ == "__main__":  # not again in the processes `campaign check` spawns to render
    main()
