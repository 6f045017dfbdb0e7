//! `merge-guard`: the deployer prompt's contract.

/// The exact pre-merge step the deployer prompt must run.
const GUARD_STEP: &str = r#"orch merge-guard --task "$ORCH_TASK_ID" --merge"#;

/// Ways of merging other than the guard; a prompt may name them only to forbid them.
const OTHER_WAYS: &[&str] = &[
    "git merge",
    "git push",
    "git rebase",
    "git cherry-pick",
    "tea pr",
    "tea pulls",
    "gh pr",
    "/merge",
    "/pulls/",
    "api/v1",
    "curl",
    "wget",
    "http://",
    "https://",
    "\"do\":",
    "head_commit_id",
    "merge_when_checks_succeed",
    "manually-merged",
    "--no-ff",
    "--ff-only",
];

/// Words that make a sentence a prohibition.
const NEGATIONS: &[&str] = &["never", "must not", "do not", "don't"];

/// Returns why the prompt breaks the contract, or nothing when it keeps it.
fn prompt_problems(prompt: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // The guard step, verbatim, inside a fenced code block.
    let mut in_code = false;
    let mut guard_in_code = false;
    for line in prompt.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code && line.trim() == GUARD_STEP {
            guard_in_code = true;
        }
    }
    if !guard_in_code {
        problems.push(format!("no code block runs `{GUARD_STEP}`"));
    }
    for (code, meaning) in [("0", "merged"), ("1", "BLOCKED"), ("2", "ERROR")] {
        let row = format!("| {code} |");
        if !prompt
            .lines()
            .any(|l| l.trim_start().starts_with(&row) && l.contains(meaning))
        {
            problems.push(format!("exit code {code} ({meaning}) is not explained"));
        }
    }
    let lower = prompt.to_lowercase();
    if !lower.contains("read the state again before anything irreversible") {
        problems.push("the re-read-before-irreversible rule is missing".into());
    }
    // Every other way of merging may appear only after a negation in its sentence.
    for sentence in sentences(&lower) {
        for way in OTHER_WAYS {
            let mut from = 0;
            while let Some(at) = sentence[from..].find(way) {
                let at = from + at;
                let before = &sentence[..at];
                if !NEGATIONS.iter().any(|n| before.contains(n)) {
                    problems.push(format!(
                        "describes another way to merge ({way}): {sentence}"
                    ));
                }
                from = at + way.len();
            }
        }
    }
    problems
}

/// Splits Markdown into sentences: wrapped lines joined, split at blank lines, list
/// items, table rows and sentence ends.
fn sentences(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        let starts_block = t.is_empty()
            || t.starts_with("- ")
            || t.starts_with('|')
            || t.starts_with("```")
            || t.starts_with('#')
            || t.chars().next().is_some_and(|c| c.is_ascii_digit()) && t.contains(". ");
        if starts_block && !cur.trim().is_empty() {
            blocks.push(std::mem::take(&mut cur));
        }
        cur.push(' ');
        cur.push_str(t);
        if t.starts_with('|') || t.starts_with("```") {
            blocks.push(std::mem::take(&mut cur));
        }
    }
    blocks.push(cur);
    blocks
        .iter()
        .flat_map(|b| {
            b.split(". ")
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn deployer_prompt() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/agents/deployer.md");
    std::fs::read_to_string(path).expect("docs/agents/deployer.md")
}

#[test]
fn the_deployer_prompt_merges_only_through_the_guard() {
    let prompt = deployer_prompt();
    let problems = prompt_problems(&prompt);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_prompt_check_catches_a_prompt_that_drifts() {
    let good = deployer_prompt();
    assert!(prompt_problems(&good).is_empty());
    let drifted: Vec<(&str, String)> = vec![
        ("guard removed", good.replace(GUARD_STEP, "echo skipping the guard")),
        (
            "guard without --merge",
            good.replace(GUARD_STEP, r#"orch merge-guard --task "$ORCH_TASK_ID""#),
        ),
        (
            "merge API by curl",
            format!("{good}\nIf the guard fails, run `curl -X POST \"$GITEA/api/v1/repos/acme/shop/pulls/7/merge\" -d '{{\"Do\":\"merge\"}}'`.\n"),
        ),
        (
            "git merge into main",
            format!("{good}\nTo merge, check out main and run git merge task/shop-1, then push.\n"),
        ),
        ("tea", format!("{good}\n- Merge with `tea pr merge 7`.\n")),
        (
            "a numbered step",
            good.replace(
                "3. Deploy the default branch",
                "3. Merge with `git merge --no-ff` and deploy the default branch",
            ),
        ),
        (
            "exit codes no longer explained",
            good.replace("| 1 | BLOCKED", "| one | BLOCKED"),
        ),
        (
            "re-read rule dropped",
            good.replace("read the state again before anything irreversible", "be careful"),
        ),
    ];
    for (name, prompt) in drifted {
        assert_ne!(prompt, good, "{name}: the mutation must change the prompt");
        assert!(
            !prompt_problems(&prompt).is_empty(),
            "{name}: the check must catch it"
        );
    }
}
