//! The pipeline file from typed parts: projects (the same ones the stand-ins are seeded
//! with), agents and any further top-level sections, so no test writes the YAML header,
//! the project list or the agent block by hand.

/// One project of the pipeline file, with what the stand-ins need to know about it.
#[derive(Clone, Debug)]
pub struct Project {
    /// `projects[].name`.
    pub name: &'static str,
    /// `projects[].plane_project_id` (also the Plane stand-in's project).
    pub plane_project_id: &'static str,
    /// `projects[].plane_identifier`: the prefix of task keys.
    pub identifier: &'static str,
    /// `projects[].repo` (also the Gitea stand-in's repository).
    pub repo: &'static str,
    /// `projects[].default_branch`, written only when set.
    pub default_branch: Option<&'static str>,
    /// `projects[].self_hosting: true` when set.
    pub self_hosting: bool,
    /// Further keys of this project, one per line, unindented (`states:` blocks are
    /// indented relative to it); `$PROD_URL` becomes the production stand-in's URL.
    pub extra: String,
}

impl Project {
    /// `orch`, the self-hosting project (ORCH-n, `acme/orch`).
    pub fn orch() -> Project {
        Project::new(
            "orch",
            "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02",
            "ORCH",
            "acme/orch",
        )
        .self_hosting(true)
    }

    /// `shop` (SHOP-n, `acme/shop`).
    pub fn shop() -> Project {
        Project::new(
            "shop",
            "1c2d3e4f-0000-4000-8000-000000000002",
            "SHOP",
            "acme/shop",
        )
    }

    /// `web` (WEB-n, `acme/web`).
    pub fn web() -> Project {
        Project::new(
            "web",
            "3e4f5a6b-0000-4000-8000-000000000003",
            "WEB",
            "acme/web",
        )
    }

    /// `sandbox` (SBX-n, `acme/sandbox`).
    pub fn sandbox() -> Project {
        Project::new(
            "sandbox",
            "1c2d3e4f-0000-4000-8000-000000000009",
            "SBX",
            "acme/sandbox",
        )
    }

    /// A project from its four required keys.
    pub fn new(
        name: &'static str,
        plane_project_id: &'static str,
        identifier: &'static str,
        repo: &'static str,
    ) -> Project {
        Project {
            name,
            plane_project_id,
            identifier,
            repo,
            default_branch: None,
            self_hosting: false,
            extra: String::new(),
        }
    }

    /// Sets `self_hosting`.
    pub fn self_hosting(mut self, on: bool) -> Project {
        self.self_hosting = on;
        self
    }

    /// Sets `default_branch`.
    pub fn default_branch(mut self, branch: &'static str) -> Project {
        self.default_branch = Some(branch);
        self
    }

    /// Appends project keys (unindented YAML lines), e.g. `"states:\n  blocked: { names: [Blocked] }"`.
    pub fn with(mut self, yaml: &str) -> Project {
        for line in yaml.trim_matches('\n').lines() {
            self.extra.push_str(line);
            self.extra.push('\n');
        }
        self
    }

    /// Returns the key of the project's task number `n` (`SHOP-3`).
    pub fn key(&self, n: u64) -> String {
        format!("{}-{n}", self.identifier)
    }

    /// Returns the branch the kit gives task number `n` (`task/shop-3`).
    pub fn branch(&self, n: u64) -> String {
        format!("task/{}", self.key(n).to_lowercase())
    }

    /// Returns the Gitea default branch (`main` unless set).
    pub fn base(&self) -> &'static str {
        self.default_branch.unwrap_or("main")
    }
}

/// Agents that do nothing and succeed.
pub const TRUE_AGENTS: &str = r#"analyst: [/bin/true, "{task}"]
developer: [/bin/true, "{task}"]
reviewer: [/bin/true, "{task}"]
deployer: [/bin/true, "{task}"]"#;

/// Renders a pipeline file: the workspace, `projects`, `agents` (unindented YAML lines,
/// omitted when empty) and further top-level `sections` (verbatim YAML).
pub fn render(projects: &[Project], agents: &str, sections: &str) -> String {
    let mut y = String::from("plane: { workspace: acme }\nprojects:\n");
    for p in projects {
        y.push_str(&format!(
            "  - name: {}\n    plane_project_id: {}\n    plane_identifier: {}\n    repo: {}\n",
            p.name, p.plane_project_id, p.identifier, p.repo
        ));
        if let Some(b) = p.default_branch {
            y.push_str(&format!("    default_branch: {b}\n"));
        }
        if p.self_hosting {
            y.push_str("    self_hosting: true\n");
        }
        for line in p.extra.lines() {
            y.push_str(&format!("    {line}\n"));
        }
    }
    if !agents.trim().is_empty() {
        y.push_str("agents:\n");
        for line in agents.trim_matches('\n').lines() {
            y.push_str(&format!("  {line}\n"));
        }
    }
    y.push_str(sections);
    y
}
