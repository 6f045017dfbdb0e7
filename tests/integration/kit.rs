//! The test kit itself: the ~15-line first integration test the builder's doc shows,
//! and what `seed_task` writes.

use orch::core::stage::Stage;

use crate::common::{seed_task, snapshot, Project, SeedTask, Standin, TestEnv, NOW_UNIX};

#[test]
fn reconcile_dry_run_waits_for_a_review_with_no_job_yet() {
    let shop = Project::shop();
    let env = TestEnv::builder()
        .project(shop.clone())
        .standins(&[Standin::Plane, Standin::Gitea, Standin::Telegram])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .build();
    let task = SeedTask::new(&shop, 1, Stage::Review).at(NOW_UNIX - 3600);
    seed_task(&env, &task.branch_ready());
    let run = env.run(&["reconcile", "--dry-run"]);
    insta::assert_snapshot!(snapshot::report(&env, &run), @r"
    exit: 0
    SHOP-1 review: wait: no job has run yet: check_review_approved: 05-review.md: missing
    ");
    assert_eq!(
        env.count("SELECT count(*) FROM jobs"),
        0,
        "a dry run changes nothing"
    );
}

#[test]
fn seed_task_walks_legal_moves_and_leaves_no_jobs() {
    let shop = Project::shop();
    let env = TestEnv::builder().project(shop.clone()).build();
    let task = SeedTask::new(&shop, 4, Stage::DeployStaging)
        .at(NOW_UNIX - 60)
        .pr(7)
        .retries(2)
        .validated("abc123")
        .branch_ready();
    let id = seed_task(&env, &task);
    let row: (String, i64, Option<i64>, i64, Option<String>, Option<i64>) = env
        .db()
        .query_row(
            "SELECT stage, stage_entered_at, pr_number, developer_retries, validated_revision,
                    branch_ready_at FROM tasks WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .unwrap();
    let at = NOW_UNIX - 60;
    let expected = (
        "deploy-staging".into(),
        at,
        Some(7),
        2,
        Some("abc123".into()),
        Some(at),
    );
    assert_eq!(row, expected);
    assert_eq!(env.count("SELECT count(*) FROM jobs"), 0);
    let path = env.count("SELECT count(*) FROM stage_events WHERE actor = 'operator'");
    assert_eq!(
        path,
        1 + 3 + 2 * 2,
        "created, three moves, two rollbacks and returns"
    );
}
