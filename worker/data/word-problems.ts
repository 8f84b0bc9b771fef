/**
 * A small multilingual instruction set that polytune writes itself, for the quickstart and for
 * tests: arithmetic word problems in ten languages (SLAM's: bn th sw ja zh de fr ru es en) with
 * exact answers and a short worked solution, as alpaca-format records.
 *
 * The texts are templates; the numbers come from a seeded generator, so the same seed gives the
 * same file on every machine.
 */
import { mulberry32 } from '../../common/data-plan.js';

export const WORD_PROBLEM_LANGUAGES = ['en', 'de', 'fr', 'es', 'ru', 'zh', 'ja', 'th', 'sw', 'bn'] as const;
export type WordProblemLanguage = (typeof WORD_PROBLEM_LANGUAGES)[number];

export type Op = 'add' | 'sub' | 'mul';
interface Template {
  readonly question: (a: number, b: number) => string;
  /** "The answer is" in the language; the solution is `a op b = c. <answer> c.` */
  readonly answer: string;
}

const TEMPLATES: Record<WordProblemLanguage, Record<Op, Template>> = {
  en: {
    add: {
      question: (a, b) => `Maria has ${a} apples. She buys ${b} more. How many apples does she have now?`,
      answer: 'The answer is',
    },
    sub: {
      question: (a, b) => `A baker made ${a} loaves of bread and sold ${b}. How many loaves are left?`,
      answer: 'The answer is',
    },
    mul: {
      question: (a, b) => `There are ${a} boxes with ${b} pencils in each box. How many pencils are there in total?`,
      answer: 'The answer is',
    },
  },
  de: {
    add: {
      question: (a, b) => `Maria hat ${a} Äpfel. Sie kauft ${b} dazu. Wie viele Äpfel hat sie jetzt?`,
      answer: 'Die Antwort ist',
    },
    sub: {
      question: (a, b) => `Ein Bäcker hat ${a} Brote gebacken und ${b} verkauft. Wie viele Brote sind übrig?`,
      answer: 'Die Antwort ist',
    },
    mul: {
      question: (a, b) => `Es gibt ${a} Schachteln mit je ${b} Stiften. Wie viele Stifte sind es insgesamt?`,
      answer: 'Die Antwort ist',
    },
  },
  fr: {
    add: {
      question: (a, b) => `Maria a ${a} pommes. Elle en achète ${b} de plus. Combien de pommes a-t-elle maintenant ?`,
      answer: 'La réponse est',
    },
    sub: {
      question: (a, b) => `Un boulanger a fait ${a} pains et en a vendu ${b}. Combien de pains reste-t-il ?`,
      answer: 'La réponse est',
    },
    mul: {
      question: (a, b) => `Il y a ${a} boîtes de ${b} crayons chacune. Combien de crayons y a-t-il au total ?`,
      answer: 'La réponse est',
    },
  },
  es: {
    add: {
      question: (a, b) => `María tiene ${a} manzanas. Compra ${b} más. ¿Cuántas manzanas tiene ahora?`,
      answer: 'La respuesta es',
    },
    sub: {
      question: (a, b) => `Un panadero hizo ${a} panes y vendió ${b}. ¿Cuántos panes quedan?`,
      answer: 'La respuesta es',
    },
    mul: {
      question: (a, b) => `Hay ${a} cajas con ${b} lápices en cada una. ¿Cuántos lápices hay en total?`,
      answer: 'La respuesta es',
    },
  },
  ru: {
    add: {
      question: (a, b) => `У Марии ${a} яблок. Она покупает ещё ${b}. Сколько яблок у неё теперь?`,
      answer: 'Ответ:',
    },
    sub: {
      question: (a, b) => `Пекарь испёк ${a} буханок хлеба и продал ${b}. Сколько буханок осталось?`,
      answer: 'Ответ:',
    },
    mul: {
      question: (a, b) => `Есть ${a} коробок, в каждой по ${b} карандашей. Сколько всего карандашей?`,
      answer: 'Ответ:',
    },
  },
  zh: {
    add: { question: (a, b) => `玛丽亚有${a}个苹果。她又买了${b}个。她现在有多少个苹果？`, answer: '答案是' },
    sub: { question: (a, b) => `面包师做了${a}个面包，卖掉了${b}个。还剩多少个面包？`, answer: '答案是' },
    mul: { question: (a, b) => `有${a}个盒子，每个盒子里有${b}支铅笔。一共有多少支铅笔？`, answer: '答案是' },
  },
  ja: {
    add: {
      question: (a, b) => `マリアはりんごを${a}個持っています。さらに${b}個買いました。今りんごは何個ありますか？`,
      answer: '答えは',
    },
    sub: {
      question: (a, b) => `パン屋さんはパンを${a}個焼いて、${b}個売りました。パンは何個残っていますか？`,
      answer: '答えは',
    },
    mul: {
      question: (a, b) => `箱が${a}個あり、それぞれに鉛筆が${b}本入っています。鉛筆は全部で何本ですか？`,
      answer: '答えは',
    },
  },
  th: {
    add: { question: (a, b) => `มาเรียมีแอปเปิล ${a} ผล เธอซื้อเพิ่มอีก ${b} ผล ตอนนี้เธอมีแอปเปิลกี่ผล`, answer: 'คำตอบคือ' },
    sub: { question: (a, b) => `คนทำขนมปังอบขนมปัง ${a} ก้อน และขายไป ${b} ก้อน เหลือขนมปังกี่ก้อน`, answer: 'คำตอบคือ' },
    mul: { question: (a, b) => `มีกล่อง ${a} กล่อง แต่ละกล่องมีดินสอ ${b} แท่ง มีดินสอทั้งหมดกี่แท่ง`, answer: 'คำตอบคือ' },
  },
  sw: {
    add: {
      question: (a, b) => `Maria ana matufaha ${a}. Ananunua mengine ${b}. Sasa ana matufaha mangapi?`,
      answer: 'Jibu ni',
    },
    sub: {
      question: (a, b) => `Mwokaji alioka mikate ${a} na akauza ${b}. Imebaki mikate mingapi?`,
      answer: 'Jibu ni',
    },
    mul: {
      question: (a, b) => `Kuna masanduku ${a} yenye penseli ${b} kila moja. Kuna penseli ngapi kwa jumla?`,
      answer: 'Jibu ni',
    },
  },
  bn: {
    add: {
      question: (a, b) => `মারিয়ার কাছে ${a}টি আপেল আছে। সে আরও ${b}টি কেনে। এখন তার কাছে কতগুলি আপেল আছে?`,
      answer: 'উত্তর হল',
    },
    sub: {
      question: (a, b) => `একজন রুটিওয়ালা ${a}টি রুটি বানিয়ে ${b}টি বিক্রি করল। কতগুলি রুটি বাকি আছে?`,
      answer: 'উত্তর হল',
    },
    mul: { question: (a, b) => `${a}টি বাক্সের প্রতিটিতে ${b}টি পেন্সিল আছে। মোট কতগুলি পেন্সিল আছে?`, answer: 'উত্তর হল' },
  },
};

const OPS: readonly Op[] = ['add', 'sub', 'mul'];
const SYMBOL: Record<Op, string> = { add: '+', sub: '-', mul: '*' };

export interface WordProblem {
  readonly instruction: string;
  readonly output: string;
  readonly language: WordProblemLanguage;
  readonly answer: number;
  /** The same problem's question in English (the target of question translation). */
  readonly english: string;
  /** The arithmetic behind it, `add 12 7` (see `problemKey`): the same in every language. */
  readonly key: string;
}

/** The operand ranges, inclusive; a difference's `b` is 1..a-1. */
export interface OperandRanges {
  /** `a` of a sum or a difference. */
  readonly addSub: readonly [number, number];
  /** `b` of a sum. */
  readonly addend: readonly [number, number];
  /** Both factors of a product. */
  readonly mul: readonly [number, number];
}

/** The quickstart's ranges: two-digit sums and differences, a times table up to 12. */
export const DEFAULT_OPERAND_RANGES: OperandRanges = { addSub: [10, 99], addend: [1, 99], mul: [2, 12] };

export interface WordProblemOptions {
  /** @default all ten */
  readonly languages?: readonly WordProblemLanguage[];
  /** @default DEFAULT_OPERAND_RANGES */
  readonly ranges?: OperandRanges;
  /** Arithmetic never drawn (keys as `problemKey`), e.g. a held-out test set's. */
  readonly exclude?: ReadonlySet<string>;
  /**
   * The i-th problem of every language is the same arithmetic (line-parallel, as MGSM): one draw
   * per index instead of one per language. @default false
   */
  readonly parallel?: boolean;
}

/** The key of an arithmetic problem: `add 12 7`, `sub 40 3`, `mul 6 8`. */
export function problemKey(op: Op, a: number, b: number): string {
  return `${op} ${a} ${b}`;
}

/**
 * `perLanguage` problems in each language, interleaved by language, from `seed`. Without options it
 * draws exactly what it always drew (the quickstart's and the tests' data do not change).
 */
export function makeWordProblems(perLanguage: number, seed = 1, options: WordProblemOptions = {}): WordProblem[] {
  const languages = options.languages ?? WORD_PROBLEM_LANGUAGES;
  const ranges = options.ranges ?? DEFAULT_OPERAND_RANGES;
  const rand = mulberry32(seed);
  const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));
  const draw = (): { op: Op; a: number; b: number } => {
    for (let attempt = 0; attempt < 10_000; attempt++) {
      const op = OPS[int(0, OPS.length - 1)]!;
      const [lo, hi] = op === 'mul' ? ranges.mul : ranges.addSub;
      const a = int(lo, hi);
      const b =
        op === 'mul'
          ? int(ranges.mul[0], ranges.mul[1])
          : op === 'sub'
            ? int(1, a - 1)
            : int(ranges.addend[0], ranges.addend[1]);
      if (!options.exclude?.has(problemKey(op, a, b))) return { op, a, b };
    }
    throw new Error('makeWordProblems: 10000 draws in a row were all excluded; widen the ranges');
  };
  const out: WordProblem[] = [];
  for (let i = 0; i < perLanguage; i++) {
    const shared = options.parallel ? draw() : undefined;
    for (const language of languages) {
      const { op, a, b } = shared ?? draw();
      const answer = op === 'add' ? a + b : op === 'sub' ? a - b : a * b;
      const t = TEMPLATES[language][op];
      out.push({
        instruction: t.question(a, b),
        output: `${a} ${SYMBOL[op]} ${b} = ${answer}. ${t.answer} ${answer}.`,
        language,
        answer,
        english: TEMPLATES.en[op].question(a, b),
        key: problemKey(op, a, b),
      });
    }
  }
  return out;
}

/** The problems as alpaca JSON Lines. */
export function wordProblemsJsonl(problems: readonly WordProblem[]): string {
  return (
    problems
      .map((p) => JSON.stringify({ instruction: p.instruction, output: p.output, language: p.language }))
      .join('\n') + '\n'
  );
}

/**
 * The problems as CC-Tuning records (`format: cctuning`): each with its English instruction (the
 * same numbers in English; an English problem is its own pair).
 */
export function ccTuningJsonl(problems: readonly WordProblem[]): string {
  return (
    problems
      .map((p) =>
        JSON.stringify({
          instruction: p.instruction,
          output: p.output,
          instruction_en: p.english,
          language: p.language,
        }),
      )
      .join('\n') + '\n'
  );
}

/**
 * Question translation (the first stage of QAlign-style two-stage systems): for each language but
 * English, its questions and the same questions in English, as the two line-aligned texts of the
 * `parallel` format.
 */
export function questionTranslationTexts(
  problems: readonly WordProblem[],
): Map<WordProblemLanguage, { source: string; target: string }> {
  const out = new Map<WordProblemLanguage, { source: string[]; target: string[] }>();
  for (const p of problems) {
    if (p.language === 'en') continue;
    const t = out.get(p.language) ?? { source: [], target: [] };
    t.source.push(p.instruction);
    t.target.push(p.english);
    out.set(p.language, t);
  }
  return new Map(
    [...out].map(([l, t]) => [l, { source: t.source.join('\n') + '\n', target: t.target.join('\n') + '\n' }]),
  );
}
