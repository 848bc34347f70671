import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The project root (tests run compiled from dist/test/...). */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, "package.json"))) return dir;
    dir = dirname(dir);
  }
  throw new Error("project root not found");
}

export function readFixture<T>(name: string): T {
  return JSON.parse(readFileSync(join(projectRoot(), "test", "fixtures", name), "utf8")) as T;
}
